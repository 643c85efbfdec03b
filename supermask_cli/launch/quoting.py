"""Values that enter a job script: refused when they cannot be written safely, quoted otherwise.

Two readers parse a Slurm job script. bash runs its command lines: a word is safe once
``shlex.quote``'d, except that a newline (or any control character) still breaks the script into
lines a reader cannot trust. sbatch reads the ``#SBATCH`` lines before the first command
(src/sbatch/opt.c ``_get_argument``): a backslash escapes the next character everywhere, single and
double quotes group (older Slurm: double quotes only), an unquoted ``#`` starts a comment, and a
newline ends the directive, so the rest of the value becomes a shell command and every later
``#SBATCH`` line is ignored. ``--output`` and ``--chdir`` also expand ``%`` patterns. A header value
is therefore written in double quotes, and refused when it holds a control character, ``"``, ``\\``
or (for a path) ``%``: none of these can be written so that every Slurm version reads it back.
"""

from __future__ import annotations

import shlex

from ..errors import SupermaskError


def _control(value: str) -> str | None:
    """The first control character of ``value`` (C0, DEL, C1, line and paragraph separators)."""
    for ch in value:
        if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or ch in "\u2028\u2029":
            return ch
    return None


def refuse_control(what: str, value: str) -> str:
    """``value``, or a one-line refusal naming ``what`` when it holds a newline, NUL or other control character."""
    ch = _control(value)
    if ch is not None:
        raise SupermaskError(
            f"{what} {value!r}: holds the control character U+{ord(ch):04X}, which no script or config line "
            "can carry safely (a newline would start a new line)"
        )
    return value


def shell_word(what: str, value: str) -> str:
    """``value`` as one bash word (``shlex.quote``), refused when it holds a control character."""
    return shlex.quote(refuse_control(what, value))


def sbatch_value(what: str, value: str, *, path: bool = False) -> str:
    """``value`` double-quoted for an ``#SBATCH`` line, refused when sbatch could not read it back exactly."""
    refuse_control(what, value)
    bad = [ch for ch in ('"', "\\", *(("%",) if path else ())) if ch in value]
    if bad:
        raise SupermaskError(
            f"{what} {value!r}: holds {bad[0]!r}, which an #SBATCH line cannot carry "
            f"(sbatch reads {'quotes and backslashes' if bad[0] != '%' else '% as a file-name pattern'}); "
            "use a path without it"
        )
    return f'"{value}"'


def sbatch_arg(value: str) -> str:
    """An ``--sbatch-arg``: one sbatch option (argv, never a shell), so it must look like one."""
    refuse_control("--sbatch-arg", value)
    if not value.startswith("-"):
        raise SupermaskError(
            f"--sbatch-arg {value!r}: not an option (sbatch would take it as the job script); "
            "pass options like --sbatch-arg=--partition=gpu"
        )
    return value
