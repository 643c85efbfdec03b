"""`supermask slurm --dry-run` with hostile run dirs, config paths, working dirs and --sbatch-arg values.

Each generated job script is read back the way its two readers read it: sbatch's directive scan
(a port of src/sbatch/opt.c: quotes, backslash escapes, `#` comments, stop at the first command)
and bash's word splitting (shlex, POSIX rules). A value either comes back exactly, or the command
is refused with one line naming the option, exit 2, before any script is written."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from supermask_cli.cli import app

from conftest import tiny_config_dict

FIRST_COMMAND = "set -euo pipefail"


def sbatch_words(text: str) -> list[str]:
    """The arguments sbatch reads from one directive's text (after `#SBATCH`)."""
    words: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return words
        word, quote, escape = [], "", False
        while i < n and (quote or not text[i].isspace()):
            ch = text[i]
            i += 1
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
                continue
            elif quote:
                if ch == quote:
                    quote = ""
                    continue
            elif ch in "\"'":
                quote = ch
                continue
            elif ch == "#":
                return words + (["".join(word)] if word else [])
            word.append(ch)
        assert not quote, f"sbatch: unmatched {quote} in {text!r}"
        words.append("".join(word))


def directives(script: str) -> list[list[str]]:
    """Per #SBATCH line that sbatch honours (those before the first command), its arguments."""
    out = []
    for line in script.splitlines()[1:]:
        if line.startswith("#SBATCH"):
            out.append(sbatch_words(line[len("#SBATCH"):]))
        elif line.strip() and not line.startswith("#"):
            break
    return out


def dry_run(config: Path, *args: str):
    return CliRunner().invoke(app, ["slurm", "--config", str(config), "--dry-run", *args])


def scripts(output: str) -> dict[str, tuple[str, list[str]]]:
    """Job name -> (script text, sbatch argv as a shell reads the printed command)."""
    jobs = {}
    for block in output.strip().split("\n\n"):
        lines = block.splitlines()
        jobs[Path(lines[0].removeprefix("# ")).stem] = ("\n".join(lines[1:-1]) + "\n", shlex.split(lines[-1][2:]))
    return jobs


def hostile_setup(tmp_path: Path, tiny_model, tiny_data, name: str) -> tuple[Path, Path]:
    """A config file and run dir, both under a directory called ``name``; cwd there too."""
    home = tmp_path / name
    home.mkdir()
    run_dir = home / "run"
    raw = tiny_config_dict(run_dir, tiny_model, tiny_data, "threshold")
    raw["federation"].update(num_clients=2, rounds=1)
    config = home / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config, run_dir


QUOTED = ["with space", "hash#not a comment", "it's", "semi;colon", "$(touch pwned)", "`touch pwned`",
          "amp&pipe|lt<gt>", "star*glob?", "dollar$HOME", "tab-free unicode é"]


@pytest.mark.parametrize("name", QUOTED)
def test_hostile_paths_come_back_exactly(tmp_path, tiny_model, tiny_data, monkeypatch, name):
    # Prepare
    config, run_dir = hostile_setup(tmp_path, tiny_model, tiny_data, name)
    monkeypatch.chdir(config.parent)
    sbatch_args = ["--comment=a b;touch pwned", "--comment=$(touch pwned)", f"--comment={name}"]

    # Execute
    result = dry_run(config, "--set", "train.max_steps=3", *(f"--sbatch-arg={a}" for a in sbatch_args))

    # Assert
    assert result.exit_code == 0, result.output
    jobs = scripts(result.stdout)
    assert list(jobs) == ["init", "eval_000", "clients_000", "aggregate_000", "eval_001"]
    for job, (text, sbatch) in jobs.items():
        lines = text.splitlines()
        assert lines[0] == "#!/bin/bash"
        first = lines.index(FIRST_COMMAND)
        assert all(not line.startswith("#SBATCH") for line in lines[first:]), job
        assert all(line.startswith("#") for line in lines[1:first]), job
        assert len(lines) == first + 3, job  # set, export, the one command
        honoured = directives(text)
        assert all(len(words) == 1 for words in honoured), honoured
        opts = [words[0] for words in honoured]
        assert len(opts) == sum(line.startswith("#SBATCH") for line in lines)
        assert "--kill-on-invalid-dep=yes" in opts
        pattern = "%x-%A_%a.out" if job.startswith("clients") else "%x-%j.out"
        assert f"--output={run_dir / 'slurm' / 'logs'}/{pattern}" in opts
        assert f"--chdir={config.parent}" in opts
        assert f"--job-name=run.{job}" in opts
        argv = shlex.split(lines[-1])
        assert argv[:5] == [sys.executable, "-m", "supermask_cli", job.split("_")[0].replace("clients", "train-client"),
                            "--config"]
        assert argv[5:8] == [str(config), "--set", "train.max_steps=3"]
        assert sbatch[0:2] == ["sbatch", "--parsable"]
        assert sbatch[-4:] == [*sbatch_args, str(run_dir / "slurm" / f"{job}.sh")]
    assert not list(tmp_path.rglob("pwned"))


REFUSED = [
    ("run_dir", "newline\ntouch pwned"),
    ("run_dir", "cr\rx"),
    ("run_dir", "esc\x1b[2Jx"),
    ("run_dir", "nul\x00x"),
    ("run_dir", "del\x7fx"),
    ("run_dir", "sep\u2028x"),
    ("run_dir", 'double"quote'),
    ("run_dir", "back\\slash"),
    ("run_dir", "per%jcent"),
]


@pytest.mark.parametrize(("what", "name"), REFUSED, ids=[repr(n) for _, n in REFUSED])
def test_unrepresentable_run_dirs_are_refused(tmp_path, tiny_model, tiny_data, what, name):
    # Prepare: the config file itself lives at a plain path
    raw = tiny_config_dict(tmp_path / name / "run", tiny_model, tiny_data, "threshold")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))

    # Execute
    result = dry_run(config)

    # Assert: one line naming run_dir, exit 2, nothing written
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and what in lines[0], result.output
    assert not list(tmp_path.rglob("*.sh")) and not list(tmp_path.rglob("pwned"))


@pytest.mark.parametrize(("args", "named"), [
    (["--sbatch-arg=--comment=a\n#SBATCH --wrap=touch pwned"], "--sbatch-arg"),
    (["--sbatch-arg=--comment=\x00"], "--sbatch-arg"),
    (["--sbatch-arg=evil.sh"], "--sbatch-arg"),
    (["--set", "run_dir=x\ntouch pwned"], "--set"),
    (["--slurm-dir", "logs\nhere"], "--slurm-dir"),
    (["--slurm-dir", 'q"uote'], "--slurm-dir"),
])
def test_unsafe_options_are_refused(tiny_config, tmp_path, args, named):
    result = dry_run(tiny_config("threshold"), *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and named in lines[0], result.output
    assert not list(tmp_path.rglob("*.sh")) and not list(tmp_path.rglob("pwned"))


def test_a_hostile_working_directory_is_refused(tiny_config, tmp_path, monkeypatch):
    config = tiny_config("threshold")
    cwd = tmp_path / "work\\dir"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = dry_run(config)
    assert result.exit_code == 2 and "working directory" in result.output, result.output


def test_sbatch_words_reads_like_sbatch():
    # The port itself: quotes group, backslash escapes, unquoted # ends the line
    assert sbatch_words(' --a="x y" --b=\'p#q\' c\\"d e # --f') == ["--a=x y", "--b=p#q", 'c"d', "e"]
    assert directives("#!/bin/bash\n#SBATCH --a\n# note\n\necho\n#SBATCH --b\n") == [["--a"]]
