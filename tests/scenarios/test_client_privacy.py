"""Privacy held by the client, end to end on the tiny BERT: composition across a batch-size change,
the client's policy and its own ledger, what the run publishes."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from opacus.accountants import RDPAccountant
from typer.testing import CliRunner

from supermask_cli import steps
from supermask_cli.cli import app
from supermask_cli.checkpoint import read_meta
from supermask_cli.config import load_config
from supermask_cli.layout import Layout
from supermask_cli.report import load_history, table_rows


def _opacus(history: list[tuple[float, float, int]], delta: float = 1e-5) -> float:
    acc = RDPAccountant()
    acc.history = history  # one (noise multiplier, sample rate, steps) entry per segment
    return acc.get_epsilon(delta=delta)


def _two_rounds(path: Path, batches: tuple[int, int]) -> tuple[object, Layout]:
    """Round 0 at the first batch size, round 1 at the second (``train.batch_size`` is a local
    choice, outside the config digest), every client both rounds, then the final global's eval."""
    cfg = load_config(path, [f"train.batch_size={batches[0]}"])
    steps.init(cfg)
    for rnd, batch in enumerate(batches):
        cfg = load_config(path, [f"train.batch_size={batch}"])
        for client in range(3):
            steps.train_client(cfg, client, rnd=rnd)
        steps.aggregate(cfg, rnd=rnd)
    for rnd in range(3):
        steps.evaluate(cfg, rnd=rnd)
    return cfg, Layout(cfg.run_dir)


def test_batch_32_then_4_composes_both_segments_everywhere(tiny_config):
    # 3 clients of 32 examples, 4 steps a round: q = 1 in round 0, q = 0.125 in round 1
    path = tiny_config("threshold", privacy={"mode": "example", "noise_multiplier": 1.0, "max_grad_norm": 1.0})
    cfg, layout = _two_rounds(path, (32, 4))
    expected = _opacus([(1.0, 1.0, 4), (1.0, 0.125, 4)])  # ≈ 10.962; the latest (σ, q) for all 8 steps gives 3.793
    assert round(expected, 3) == 10.962
    for client in range(3):
        first = read_meta(layout.client_path(0, client)).privacy
        assert first.epsilon == pytest.approx(_opacus([(1.0, 1.0, 4)]), rel=1e-12)
        ledger = read_meta(layout.client_path(1, client)).privacy
        assert ledger.epsilon == pytest.approx(expected, rel=1e-12)
        assert ledger.round_epsilon == pytest.approx(_opacus([(1.0, 0.125, 4)]), rel=1e-12)
        assert [(r.round, r.sample_rate, r.steps) for r in ledger.history] == [(0, 1.0, 4), (1, 0.125, 4)]
    final = read_meta(layout.global_path(2)).privacy
    assert final.epsilon == pytest.approx(expected, rel=1e-12)
    assert json.loads(Path(layout.metrics_path(2)).read_text())["epsilon"] == pytest.approx(expected, rel=1e-12)
    assert steps.inspect(layout.client_path(1, 0))["privacy"]["epsilon"] == pytest.approx(expected, rel=1e-12)
    assert table_rows(load_history(cfg.run_dir))[-1]["epsilon"] == pytest.approx(expected, rel=1e-12)


def test_target_epsilon_holds_over_the_real_schedule_after_a_batch_size_change(tiny_config):
    path = tiny_config("scaling", privacy={"mode": "example", "target_epsilon": 3.0, "max_grad_norm": 1.0})
    cfg, layout = _two_rounds(path, (32, 4))
    for client in range(3):
        first, second = (read_meta(layout.client_path(r, client)).privacy for r in range(2))
        # recomputed from the σ and q each round really used: within the target (the old plan ended at 3.118)
        true = _opacus([(first.noise_multiplier, 1.0, 4), (second.noise_multiplier, 0.125, 4)])
        assert true <= 3.0
        assert second.epsilon == pytest.approx(true, rel=1e-12)
    assert read_meta(layout.global_path(2)).privacy.epsilon <= 3.0


# ------------------------------------------------------------------ the client's policy and ledger

EXAMPLE = {"mode": "example", "noise_multiplier": 1.0, "max_grad_norm": 1.0}  # q = 8/32, 4 steps: ε 4.871 a round


def _cli(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def _write_policy(path: Path, ledger: Path, **privacy) -> Path:
    path.write_text(yaml.safe_dump({"privacy": {"mode": "example", "delta": 1e-5, **privacy}, "ledger": str(ledger)}))
    return path


def _ledger_files(ledger: Path) -> dict[str, bytes]:
    return {str(p.relative_to(ledger)): p.read_bytes() for p in sorted(ledger.rglob("*")) if p.is_file()}


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), result.output
    return " ".join(lines)  # the console may wrap one line


def test_a_weaker_config_is_refused_before_training_and_nothing_is_written(tiny_config, tmp_path):
    policy = _write_policy(tmp_path / "policy.yaml", tmp_path / "ledger", max_epsilon=5.0, max_grad_norm=1.0)
    for privacy, key in [({"mode": "none"}, "privacy.mode: the run asks for 'none'"),
                         ({**EXAMPLE, "delta": 1e-3}, "privacy.delta"),
                         ({**EXAMPLE, "noise_multiplier": 0.0}, "no noise")]:
        path = tiny_config("threshold", privacy=privacy)
        cfg = load_config(path)
        steps.init(cfg, force=True)
        message = _one_line_error(_cli("train-client", "--config", path, "--client", 0, "--privacy-policy", policy))
        assert "policy.yaml" in message and key in message and "refused before training" in message
        assert not Path(Layout(cfg.run_dir).client_path(0, 0)).exists()
    assert _ledger_files(tmp_path / "ledger") == {} or all(n.endswith(".lock") for n in _ledger_files(tmp_path / "ledger"))


def test_a_release_past_the_budget_is_refused_with_the_ledger_unchanged(tiny_config, tmp_path):
    ledger = tmp_path / "ledger"
    policy = _write_policy(tmp_path / "policy.yaml", ledger, max_epsilon=5.0)  # round 0: 4.871; with round 1: 6.253
    path = tiny_config("threshold", privacy=EXAMPLE)
    cfg = load_config(path)
    steps.init(cfg)
    first = _cli("train-client", "--config", path, "--client", 0, "--privacy-policy", policy)
    assert first.exit_code == 0, first.output
    steps.aggregate(cfg, rnd=0)
    before = _ledger_files(ledger)
    message = _one_line_error(_cli("train-client", "--config", path, "--client", 0, "--privacy-policy", policy))
    assert "privacy.max_epsilon 5: round 1's release (σ 1, q 0.25, 4 steps) would take this client's ε to 6.253" in message
    assert "spent so far 4.871" in message and "the ledger unchanged" in message
    assert _ledger_files(ledger) == before
    assert not Path(Layout(cfg.run_dir).client_path(1, 0)).exists()


def test_three_requests_for_one_round_cost_one_release(tiny_config, tmp_path):
    ledger = tmp_path / "ledger"
    policy = _write_policy(tmp_path / "policy.yaml", ledger, max_epsilon=5.0)  # room for one round only
    path = tiny_config("threshold", privacy=EXAMPLE)
    cfg = load_config(path)
    steps.init(cfg)
    upload = Path(Layout(cfg.run_dir).client_path(0, 0))
    digests = []
    for _ in range(3):
        result = _cli("train-client", "--config", path, "--client", 0, "--privacy-policy", policy, "--force")
        assert result.exit_code == 0, result.output
        digests.append(hashlib.sha256(upload.read_bytes()).hexdigest())
    assert len(set(digests)) == 1  # the same upload each time (noise is secret: a fresh release would differ)
    assert "already released" in result.output
    (entries,) = [json.loads(b) for n, b in _ledger_files(ledger).items() if n.endswith(".json")]
    assert [(e["round"], e["steps"]) for e in entries["releases"]] == [(0, 4)]
    assert entries["releases"][0]["upload"] == digests[0]
    assert read_meta(str(upload)).privacy.epsilon == pytest.approx(_opacus([(1.0, 0.25, 4)]), rel=1e-12)


def test_a_round_released_from_another_global_is_refused(tiny_config, tmp_path):
    from supermask_cli.privacy.policy import PolicyRefusal, load_policy
    from supermask_cli.steps.pool import client_examples
    from supermask_cli.steps.release import open_release

    policy = load_policy(_write_policy(tmp_path / "policy.yaml", tmp_path / "ledger", max_epsilon=5.0))
    cfg = load_config(tiny_config("threshold", privacy=EXAMPLE))
    steps.init(cfg)
    steps.train_client(cfg, 0, rnd=0, policy=policy)
    gl = read_meta(Layout(cfg.run_dir).global_path(0))
    cfg = steps.resolved(cfg, gl.labels, gl.pool)  # as train-client resolves it
    examples = client_examples(cfg, 0, gl.labels, gl.pool)
    with pytest.raises(PolicyRefusal, match="already released round 0 of this run, trained from global"):
        with open_release(cfg, Layout(cfg.run_dir), 0, 0, "f" * 64, examples, policy):
            pass


def test_run_simulates_each_clients_policy(tiny_config, tmp_path):
    policies = tmp_path / "policies"
    policies.mkdir()
    for client, budget in enumerate([5.0, 7.0, 7.0]):  # client 0 can afford one round, the others two
        _write_policy(policies / f"client-{client}.yaml", tmp_path / f"ledger-{client}", max_epsilon=budget)
    path = tiny_config("threshold", privacy=EXAMPLE)
    result = _cli("run", "--config", path, "--privacy-policies", policies)
    assert result.exit_code == 0, result.output
    assert "client 0 refused" in result.output and "privacy.max_epsilon 5" in result.output
    layout = Layout(load_config(path).run_dir)
    assert sorted(layout.uploads(0)) == [0, 1, 2] and sorted(layout.uploads(1)) == [1, 2]
    for client, count in enumerate([1, 2, 2]):
        (name,) = [n for n in _ledger_files(tmp_path / f"ledger-{client}") if n.endswith(".json")]
        assert len(json.loads((tmp_path / f"ledger-{client}" / name).read_text())["releases"]) == count


def test_slurm_jobs_train_each_client_with_its_own_policy(tiny_config, tmp_path):
    policies = tmp_path / "policies dir"  # a space: the path must survive the job script's quoting
    policies.mkdir()
    config = tiny_config("threshold", federation={"num_clients": 2, "rounds": 1})
    missing = CliRunner().invoke(app, ["slurm", "--config", str(config), "--dry-run", "--privacy-policies", str(policies)])
    assert missing.exit_code == 2 and "no policy for client(s) [0, 1]" in " ".join(missing.output.split())
    for c in range(2):
        (policies / f"client-{c}.yaml").write_text("privacy: {mode: example, max_epsilon: 3}\nledger: l\n")
    result = CliRunner().invoke(app, ["slurm", "--config", str(config), "--dry-run", "--privacy-policies", str(policies)])
    assert result.exit_code == 0, result.output
    script = next((tmp_path / "run_threshold" / "slurm").glob("clients_000*.sh")).read_text()
    command = script.strip().splitlines()[-1]
    words = shlex.split(command)
    assert words[words.index("--privacy-policy") + 1] == f"{policies.resolve()}/client-$SLURM_ARRAY_TASK_ID.yaml"
    # what bash passes in array task 1: the command's words, printed one per line instead of run
    echoed = subprocess.run(["bash", "-c", "printf '%s\\n' " + command.split(" ", 1)[1]],
                            env={"SLURM_ARRAY_TASK_ID": "1", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    args = echoed.stdout.splitlines()
    assert args[args.index("--client") + 1] == "1"
    assert args[args.index("--privacy-policy") + 1] == f"{policies.resolve()}/client-1.yaml"


# ------------------------------------------------------------------ what the run publishes


def test_client_mode_publishes_no_value_of_an_un_noised_upload(tiny_config):
    path = tiny_config("threshold", federation={"num_clients": 3, "rounds": 1},
                       privacy={"mode": "client", "noise_multiplier": 1.0, "max_flips": 16})
    cfg = load_config(path)
    steps.run(cfg)
    layout = Layout(cfg.run_dir)
    uploads = [Path(layout.client_path(0, c)).read_bytes() for c in range(3)]
    agg = read_meta(layout.global_path(1)).aggregation
    assert [c.model_dump(exclude_none=True) for c in agg.clients] == [{"client": c, "num_examples": 32} for c in range(3)]
    published = [Path(layout.global_path(1)).read_bytes(), Path(layout.metrics_log).read_bytes(),
                 *(Path(layout.metrics_path(r)).read_bytes() for r in range(2))]
    for upload in uploads:  # neither an upload's digest nor its size appears in what others read
        assert not any(hashlib.sha256(upload).hexdigest().encode() in p for p in published)
    for row in (json.loads(line) for line in Path(layout.metrics_log).read_text().splitlines()):
        assert "upload_bytes" not in row and "bits_per_weight" not in row and "epsilon" in row


def test_example_mode_still_publishes_the_uploads_records(tiny_config):
    # DP-SGD's uploads are noised: their digests and sizes are post-processing, covered by ε
    path = tiny_config("threshold", federation={"num_clients": 2, "rounds": 1}, privacy=EXAMPLE)
    cfg = load_config(path)
    steps.run(cfg)
    layout = Layout(cfg.run_dir)
    agg = read_meta(layout.global_path(1)).aggregation
    assert [c.digest for c in agg.clients] == [
        hashlib.sha256(Path(layout.client_path(0, c)).read_bytes()).hexdigest() for c in range(2)]
    assert all(c.bytes and c.mask_bits for c in agg.clients)
