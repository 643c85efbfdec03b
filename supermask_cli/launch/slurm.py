"""``supermask slurm``: a whole federated run as one chain of sbatch jobs, submitted at once.

init → eval of round 0; per round a job array of the round's participants → aggregate → eval.
Every job runs CLI commands of the interpreter that submitted it; steps whose outputs exist
(asked through :mod:`supermask_cli.steps.progress`, so URL run dirs work) are not submitted
again, so re-submitting after a failure continues the run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem

from .. import storage
from ..config import Config
from ..errors import SupermaskError
from ..privacy.policy import load_policy_dir
from ..steps.progress import progress
from .quoting import refuse_control, sbatch_arg, sbatch_value, shell_word

ARRAY_TASK = "$SLURM_ARRAY_TASK_ID"  # an array job's client id


class TaskWord(str):
    """A word of a job's command in which each ARRAY_TASK is the array job's client id (a per-client path)."""


@dataclass(frozen=True)
class Job:
    name: str  # init, eval_000, clients_000, aggregate_000
    args: list[str]  # a CLI command (after `python -m supermask_cli`), ARRAY_TASK for an array's client id
    array: list[int] = field(default_factory=list)  # client ids of a round's array job
    after: str | None = None  # the job this one waits for (when submitted in the same chain)
    dependency: str = "afterok"  # afterany: run once every task ended, however it ended
    gpus: int = 0


@dataclass(frozen=True)
class Options:
    config: Path  # absolute: jobs run on other machines
    overrides: list[str]
    directory: Path  # job scripts, logs/, jobs.json
    rounds: int
    array_parallelism: int | None = None
    sbatch_args: list[str] = field(default_factory=list)
    gpus_per_client: int = 0
    aggregate_wait: int = 0
    python: str = sys.executable
    workdir: Path = field(default_factory=Path.cwd)
    explicit_directory: bool = False  # --slurm-dir given (names it in refusals)
    privacy_policies: Path | None = None  # client N's job trains with --privacy-policy DIR/client-N.yaml


def default_gpus(cfg: Config) -> int:
    """One GPU per client job when training may use CUDA (`train.device` cuda/auto)."""
    return 1 if cfg.train.device == "auto" or cfg.train.device.startswith("cuda") else 0


def slurm_dir(cfg: Config) -> Path:
    """``<run_dir>/slurm`` for a local (or ``file://``) run dir; Slurm writes logs to local paths only."""
    fs, path = storage.filesystem(cfg.run_dir)
    if not isinstance(fs, LocalFileSystem):
        raise SupermaskError(f"run_dir '{cfg.run_dir}' is not a local path: pass --slurm-dir for job scripts and logs")
    return Path(path).resolve() / "slurm"


def plan(cfg: Config, opts: Options) -> list[Job]:
    """The jobs still needed to reach ``opts.rounds`` evaluated rounds, in submission order."""
    state = progress(cfg, rounds=opts.rounds)
    jobs: list[Job] = []
    last: str | None = None  # the job that writes the newest global, if submitted
    if not state[0].has_global:
        last = "init"
        jobs.append(Job("init", ["init"]))
    if not state[0].has_metrics:
        jobs.append(Job("eval_000", ["eval", "--round", "0"], after=last))
    for r in range(opts.rounds):
        rnd, nxt = state[r], state[r + 1]
        if not nxt.has_global:
            missing = rnd.clients_missing
            tolerant = cfg.federation.min_clients < len(rnd.participants)
            train = ["train-client", "--round", str(r), "--client", ARRAY_TASK]
            if opts.privacy_policies is not None:
                train += ["--privacy-policy", TaskWord(f"{opts.privacy_policies}/client-{ARRAY_TASK}.yaml")]
            if missing:
                jobs.append(Job(f"clients_{r:03d}", train, array=missing, after=last, gpus=opts.gpus_per_client))
            wait = ["--wait", str(opts.aggregate_wait)] if tolerant and opts.aggregate_wait else []
            jobs.append(Job(f"aggregate_{r:03d}", ["aggregate", "--round", str(r), *wait],
                            after=f"clients_{r:03d}" if missing else last,
                            dependency="afterany" if tolerant and missing else "afterok"))
            last = f"aggregate_{r:03d}"
        if not nxt.has_metrics:
            jobs.append(Job(f"eval_{r + 1:03d}", ["eval", "--round", str(r + 1)], after=None if nxt.has_global else last))
    return jobs


def _job_prefix(cfg: Config) -> str:
    base = cfg.run_dir.rstrip("/").rsplit("/", 1)[-1] or "supermask"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", base)


def _quote(word: str) -> str:
    if word == ARRAY_TASK:
        return f'"{ARRAY_TASK}"'
    if isinstance(word, TaskWord):
        return f'"{ARRAY_TASK}"'.join(shell_word("a word of the job's command", part) for part in word.split(ARRAY_TASK))
    return shell_word("a word of the job's command", word)


def header(cfg: Config, job: Job, opts: Options) -> list[str]:
    """The job's ``#SBATCH`` options, each value double-quoted (:func:`quoting.sbatch_value`)."""
    logs = sbatch_value(_directory_what(opts), str(opts.directory / "logs"), path=True)[1:-1]
    log = f"{logs}/{'%x-%A_%a.out' if job.array else '%x-%j.out'}"
    lines = [f"--job-name={sbatch_value('the job name', f'{_job_prefix(cfg)}.{job.name}')}", f'--output="{log}"',
             "--kill-on-invalid-dep=yes", f"--chdir={sbatch_value('the working directory', str(opts.workdir), path=True)}"]
    if job.array:
        limit = f"%{opts.array_parallelism}" if opts.array_parallelism else ""
        lines.append(f"--array={','.join(map(str, job.array))}{limit}")
    if job.gpus:
        lines.append(f"--gres=gpu:{job.gpus}")
    return lines


def script(cfg: Config, job: Job, opts: Options) -> str:
    """The job's bash script: #SBATCH header (name, log, array, GPUs) and its one CLI command."""
    base = [opts.python, "-m", "supermask_cli"]
    common = ["--config", str(opts.config), *(a for o in opts.overrides for a in ("--set", o))]
    command = " ".join(map(_quote, [*base, job.args[0], *common, *job.args[1:]]))
    return "\n".join([
        "#!/bin/bash",
        *(f"#SBATCH {h}" for h in header(cfg, job, opts)),
        f"# written by `supermask slurm`: {job.name}",
        "set -euo pipefail",
        "export PYTHONUNBUFFERED=1",
        command,
        "",
    ])


def sbatch_command(job: Job, path: Path, opts: Options, after_id: str | None) -> list[str]:
    dep = [f"--dependency={job.dependency}:{after_id}"] if after_id else []
    return ["sbatch", "--parsable", *dep, *opts.sbatch_args, str(path)]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SupermaskError(f"'{cmd[0]}' not found: run this on a Slurm login node (or pass --dry-run)") from None


def _queued(ids: list[str]) -> list[str]:
    """Those of ``ids`` that Slurm still knows as pending or running."""
    if not ids:
        return []
    result = _run(["squeue", "-h", "-o", "%F", "-j", ",".join(ids)])
    return sorted(set(result.stdout.split()) & set(ids)) if result.returncode == 0 else []


def _previous_ids(jobs_file: Path) -> list[str]:
    try:
        submissions = json.loads(jobs_file.read_text())["submissions"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return []
    return [str(j["id"]) for s in submissions for j in s.get("jobs", []) if j.get("id")]


def submit(cfg: Config, opts: Options, *, dry_run: bool = False) -> list[dict]:
    """Write the job scripts and (unless ``dry_run``) submit them with real dependencies.

    Returns one dict per job: name, script, sbatch command, id (None in a dry run)."""
    jobs = plan(cfg, opts)
    (opts.directory / "logs").mkdir(parents=True, exist_ok=True)
    jobs_file = opts.directory / "jobs.json"
    if not dry_run and jobs and (live := _queued(_previous_ids(jobs_file))):
        raise SupermaskError(f"jobs {', '.join(live)} of an earlier submission are still queued ({jobs_file}): "
                             "wait for them or scancel them, then submit again")
    ids: dict[str, str] = {}
    records = []
    for job in jobs:
        path = opts.directory / f"{job.name}.sh"
        path.write_text(script(cfg, job, opts))
        cmd = sbatch_command(job, path, opts, ids.get(job.after or ""))
        record = {**asdict(job), "script": str(path), "sbatch": cmd, "id": None}
        if dry_run:
            ids[job.name] = f"<{job.name}>"
        else:
            result = _run(cmd)
            if result.returncode != 0:
                if ids:
                    _run(["scancel", *ids.values()])
                raise SupermaskError(f"sbatch refused {path} (already submitted jobs cancelled): "
                                     f"{result.stderr.strip() or result.stdout.strip()}")
            ids[job.name] = record["id"] = result.stdout.strip().split(";")[0]
        records.append(record)
    if not dry_run and records:
        try:
            history = json.loads(jobs_file.read_text())["submissions"]
        except (FileNotFoundError, ValueError, KeyError):
            history = []
        history.append({"jobs": records})
        storage.write_text_atomic(str(jobs_file), json.dumps({"submissions": history}, indent=1) + "\n", force=True)
    return records


def _directory_what(opts: Options) -> str:
    return "--slurm-dir" if opts.explicit_directory else "run_dir (its slurm/ folder)"


def check_options(opts: Options) -> Options:
    """Refuse, with one line naming the option, every value a job script or sbatch could misread."""
    refuse_control("--config", str(opts.config))
    for o in opts.overrides:
        refuse_control("--set", o)
    for a in opts.sbatch_args:
        sbatch_arg(a)
    refuse_control("the Python interpreter", opts.python)
    sbatch_value(_directory_what(opts), str(opts.directory / "logs"), path=True)
    sbatch_value("the working directory", str(opts.workdir), path=True)
    if opts.privacy_policies is not None:
        refuse_control("--privacy-policies", str(opts.privacy_policies))
    return opts


def options(cfg: Config, config: Path, overrides: list[str], *, rounds: int | None, array_parallelism: int | None,
            sbatch_args: list[str], gpus_per_client: int | None, aggregate_wait: int, directory: str | None,
            privacy_policies: Path | None = None) -> Options:
    if array_parallelism is not None and array_parallelism < 1:
        raise SupermaskError(f"--array-parallelism {array_parallelism}: must be at least 1")
    if cfg.secure_aggregation.enabled:
        raise SupermaskError("secure_aggregation: `supermask slurm` does not submit its steps yet (issue 21); "
                             "use `supermask run` or the `supermask secagg` steps")
    for o in overrides:
        refuse_control("--set", o)
    if directory is not None:
        refuse_control("--slurm-dir", directory)
    else:
        refuse_control("run_dir", cfg.run_dir)
    if privacy_policies is not None:
        load_policy_dir(privacy_policies, cfg.federation.num_clients)  # every client's, valid, before any job
    return check_options(Options(
        config=config.resolve(),
        overrides=list(overrides),
        directory=Path(directory).resolve() if directory else slurm_dir(cfg),
        rounds=cfg.federation.rounds if rounds is None else rounds,
        array_parallelism=array_parallelism,
        sbatch_args=list(sbatch_args),
        gpus_per_client=default_gpus(cfg) if gpus_per_client is None else gpus_per_client,
        aggregate_wait=aggregate_wait,
        python=os.path.abspath(sys.executable),
        explicit_directory=directory is not None,
        privacy_policies=privacy_policies.resolve() if privacy_policies is not None else None,
    ))
