"""``supermask audit``: a model that memorised its few training rows is caught (AUC well above
0.5), two unseen sets of one distribution are not (AUC within 4 null standard deviations of 0.5),
a client's model is audited from its upload, a DP run's bound is printed beside the attack, and
bad inputs exit 2 naming the file.

The run: a tiny BERT (weights N(0, 0.1), so masks and head can fit), one client holding 16 rows
with *random* labels, 80 steps of batch 4 (20 epochs): only memorisation lowers their loss.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import BertConfig, BertForSequenceClassification
from typer.testing import CliRunner

from conftest import WORDS, build_tiny_model, tiny_config_dict
from supermask_cli import membership, steps
from supermask_cli.cli import app
from supermask_cli.config import load_config
from supermask_cli.steps.audit import heldout_examples

MEMBERS = 16
UNSEEN = 200
DESIGN_KEYS = {"auc", "tpr_at_fpr", "num_members", "num_non_members"}
DP_KEYS = {"epsilon", "delta", "bound_tpr_at_fpr"}


def random_rows(rng: random.Random, n: int, seen: set[str]) -> list[str]:
    """``n`` distinct 5-word sentences (never in ``seen``) with random labels."""
    rows = []
    while len(rows) < n:
        text = " ".join(rng.choice(WORDS) for _ in range(5))
        if text not in seen:
            seen.add(text)
            rows.append(f"{text}\t{rng.randint(0, 1)}")
    return rows


def write_tsv(path: Path, rows: list[str], header: str = "sentence\tlabel") -> Path:
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def audit_json(*args) -> dict:
    result = invoke("audit", *args, "--json")
    assert result.exit_code == 0, f"{args}: {result.output}\n{result.exception!r}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-client run whose 16-row pool (cut from a 216-row training file) is memorised; unseen
    sets A and B; the round's client file and the final global."""
    root = tmp_path_factory.mktemp("audit")
    model_dir = build_tiny_model(root / "model")
    config = BertConfig.from_pretrained(model_dir)
    config.initializer_range = 0.1
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(model_dir)
    rng, seen = random.Random(0), set()
    train = write_tsv(root / "train.tsv", random_rows(rng, MEMBERS + UNSEEN, seen))
    dev = write_tsv(root / "dev.tsv", random_rows(rng, 16, seen))
    unseen_a = write_tsv(root / "unseen_a.tsv", random_rows(rng, UNSEEN, seen))
    unseen_b = write_tsv(root / "unseen_b.tsv", random_rows(rng, UNSEEN, seen))
    raw = tiny_config_dict(root / "run", model_dir, (train, dev), "threshold")
    raw["data"]["max_train_examples"] = MEMBERS
    raw["federation"] = {"num_clients": 1, "rounds": 1}
    raw["train"] = {"batch_size": 4, "max_steps": 160, "lr": 0.002, "head_lr": 0.05}
    cfg_path = root / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    _, cfg = steps.init(load_config(cfg_path))
    client = steps.train_client(cfg, 0, rnd=0)
    gl = steps.aggregate(cfg, rnd=0)
    pool = steps.client_examples(cfg, 0, cfg.data.label_names)
    members = write_tsv(root / "members.tsv", [f"{t}\t{y}" for t, y in zip(pool.texts[0], pool.labels)])
    return {"root": root, "config": cfg_path, "cfg": cfg, "global": gl.path, "round0": root / "run/round_000/global.safetensors",
            "client": client.path, "members": members, "unseen_a": unseen_a, "unseen_b": unseen_b}


def test_a_memorised_global_is_caught(run, tmp_path):
    plot = tmp_path / "roc.png"
    info = audit_json("-c", run["config"], "--checkpoint", run["global"], "--members", run["members"],
                      "--non-members", run["unseen_a"], "--plot", plot)
    assert DESIGN_KEYS <= set(info) and not DP_KEYS & set(info)
    assert list(info["tpr_at_fpr"]) == ["0.001", "0.01", "0.1"]
    assert (info["num_members"], info["num_non_members"]) == (MEMBERS, UNSEEN)
    assert info["attacks"]["loss"]["auc"] > 0.8, info  # the head memorised too: the loss attack is the strong one
    assert info["attacks"]["calibrated"]["auc"] > 0.65, info  # > 0.5 + 2 null std (0.075 for 16 against 200)
    assert (info["attack"], info["auc"]) == ("loss", info["attacks"]["loss"]["auc"])
    assert info["mean_loss_members"] < 0.2 < info["mean_loss_non_members"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_pools_own_rows_and_held_out_rows_give_the_same_verdict(run):
    info = audit_json("-c", run["config"], "--checkpoint", run["global"], "--members-client", 0,
                      "--non-members-heldout", 100)
    assert (info["num_members"], info["num_non_members"]) == (MEMBERS, 100)
    assert info["attacks"]["loss"]["auc"] > 0.8, info


def test_held_out_rows_are_outside_the_pool_with_the_members_label_mix(run):
    cfg = steps.resolved(run["cfg"], run["cfg"].data.label_names)
    gl = steps.load_global(str(run["global"]))
    pool = steps.client_examples(cfg, 0, cfg.data.label_names)
    held = heldout_examples(cfg, gl, 50, pool).examples
    assert not set(held.texts[0]) & set(pool.texts[0])
    want = np.bincount(pool.labels, minlength=2) / len(pool) * 50
    assert np.abs(np.bincount(held.labels, minlength=2) - want).max() < 1


def test_unseen_sets_of_one_distribution_are_not_told_apart(run):
    info = audit_json("-c", run["config"], "--checkpoint", run["global"], "--members", run["unseen_a"],
                      "--non-members", run["unseen_b"])
    # Both sets unseen: each attack's AUC is the Mann-Whitney null, 0.5 ± 0.029 for 200 against 200;
    # 4 standard deviations is a one-in-16,000 false alarm (tests/unit/test_membership.py checks the std).
    tolerance = 4 * membership.null_auc_std(UNSEEN, UNSEEN)
    assert info["auc_null_std"] == pytest.approx(tolerance / 4)
    for name, a in info["attacks"].items():
        assert abs(a["auc"] - 0.5) < tolerance, (name, a)


def test_a_clients_model_from_its_upload(run):
    info = audit_json("-c", run["config"], "--checkpoint", run["round0"], "--client-file", run["client"],
                      "--members-client", 0, "--non-members", run["unseen_a"])
    assert (info["round"], info["client"], info["client_file"]) == (0, 0, run["client"])
    assert info["attacks"]["loss"]["auc"] > 0.8, info


def test_the_table_names_both_attacks(run):
    result = invoke("audit", "-c", run["config"], "--checkpoint", run["global"], "--members", run["members"],
                    "--non-members", run["unseen_a"])
    assert result.exit_code == 0, result.output
    assert "loss" in result.stdout and "calibrated" in result.stdout and "TPR @ FPR 0.001" in result.stdout


def test_a_dp_run_reports_its_bound(tmp_path, run):
    raw = yaml.safe_load(Path(run["config"]).read_text())
    raw["run_dir"] = str(tmp_path / "dp")
    raw["privacy"] = {"mode": "example", "noise_multiplier": 3.0, "delta": 1e-3}  # one accountant call, not a search
    raw["train"]["max_steps"] = 4
    path = tmp_path / "dp.yaml"
    path.write_text(yaml.safe_dump(raw))
    _, cfg = steps.init(load_config(path))
    steps.train_client(cfg, 0, rnd=0)
    gl = steps.aggregate(cfg, rnd=0)
    recorded = steps.load_global(gl.path).meta.privacy
    info = audit_json("-c", path, "--checkpoint", gl.path, "--members", run["members"], "--non-members", run["unseen_a"])
    assert DESIGN_KEYS | DP_KEYS <= set(info)
    assert (info["epsilon"], info["delta"]) == (recorded.epsilon, recorded.delta)
    assert 0 < info["epsilon"] < 50
    e = np.exp(info["epsilon"])
    for key, value in info["bound_tpr_at_fpr"].items():
        fpr = float(key)
        assert value == pytest.approx(min(1.0, e * fpr + 1e-3, 1 - (1 - 1e-3 - fpr) / e))


def _bad_inputs(run, tmp_path):
    members, unseen = run["members"], run["unseen_a"]
    rows = members.read_text().splitlines()[1:]
    overlap = write_tsv(tmp_path / "overlap.tsv", random_rows(random.Random(9), 5, set()) + rows[:1])
    unlabelled = write_tsv(tmp_path / "unlabelled.tsv", [r.split("\t")[0] for r in rows], header="sentence")
    minus_one = write_tsv(tmp_path / "minus_one.tsv", [r.split("\t")[0] + "\t-1" for r in rows])
    empty = write_tsv(tmp_path / "empty.tsv", [])
    common = ["-c", run["config"], "--checkpoint", run["global"]]
    return {
        "overlap": ([*common, "--members", members, "--non-members", overlap], overlap),
        "no label column": ([*common, "--members", unlabelled, "--non-members", unseen], unlabelled),
        "labels all -1": ([*common, "--members", members, "--non-members", minus_one], minus_one),
        "empty set": ([*common, "--members", members, "--non-members", empty], empty),
        "config mismatch": ([*common, "--members", members, "--non-members", unseen, "--set", "seed=1"], run["global"]),
        "client file as checkpoint": (["-c", run["config"], "--checkpoint", run["client"], "--members", members,
                                       "--non-members", unseen], run["client"]),
        "too few held-out rows": ([*common, "--members-client", 0, "--non-members-heldout", 10_000], "--non-members-heldout"),
    }


@pytest.mark.parametrize("case", ["overlap", "no label column", "labels all -1", "empty set", "config mismatch",
                                  "client file as checkpoint", "too few held-out rows"])
def test_bad_input_exits_2_naming_the_file(run, tmp_path, case):
    args, named = _bad_inputs(run, tmp_path)[case]
    result = invoke("audit", *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "error:" in errors[0] and str(named) in errors[0], result.stderr


def test_a_masked_upload_has_no_model_to_audit(tiny_config, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # secure aggregation's default secrets directories
    path = tiny_config("threshold", federation={"rounds": 1}, secure_aggregation={"enabled": True})
    cfg = load_config(path)
    _, cfg = steps.init(cfg)
    for publish in (steps.secure.publish_keys, steps.secure.share_keys):
        for c in range(3):
            publish(cfg, c, 0)
    upload = steps.train_client(cfg, 0, rnd=0).path
    result = invoke("audit", "-c", path, "--checkpoint", Path(cfg.run_dir) / "round_000/global.safetensors",
                    "--client-file", upload, "--members", tiny_data[0], "--non-members", tiny_data[1])
    assert result.exit_code == 2, result.output
    assert upload in result.stderr and "masked upload" in result.stderr
