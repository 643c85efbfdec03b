"""Secure aggregation through files: the client steps, the survivor list and the unmasked sum;
nothing secret under run_dir; refusals as one line with exit 2."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from supermask_cli import steps
from supermask_cli.cli import app
from supermask_cli.config import config_digest, load_config
from supermask_cli.errors import SecureAggregationError
from supermask_cli.layout import Layout
from supermask_cli.secagg import encoding, masking
from supermask_cli.steps import secure, unmasking

N, T = 5, 3


@pytest.fixture
def secure_run(tiny_config, tmp_path):
    path = tiny_config("threshold", federation={"num_clients": N}, secure_aggregation={"enabled": True, "threshold": T})
    cfg = load_config(path)
    steps.init(cfg)
    return path, cfg, tmp_path / "secrets"


def _inputs(cfg):
    rng = np.random.default_rng(3)
    bits = {"mask/x": encoding.sum_bits(N * 4, 1), "head/y": encoding.fixed_bits(N * 4)}
    plain = {i: (rng.integers(0, 2, 101), rng.normal(0, 1, 7)) for i in range(N)}
    x = {i: {"mask/x": encoding.encode_unsigned(m, i + 1, bits["mask/x"], what="m"),
             "head/y": encoding.encode_fixed(h, i + 1, bits["head/y"], what="h")} for i, (m, h) in plain.items()}
    return bits, plain, x


def _keys_and_shares(cfg, secrets, clients=range(N)):
    for i in clients:
        secure.publish_keys(cfg, i, secrets=secrets / f"c{i}")
    for i in clients:
        secure.share_keys(cfg, i, secrets=secrets / f"c{i}")


def test_a_file_round_unmasks_the_exact_sum_and_leaves_no_secret_under_run_dir(secure_run):
    # Prepare: every client publishes keys and shares; client 4 drops before uploading, client 3 never answers
    _, cfg, secrets = secure_run
    bits, plain, x = _inputs(cfg)
    _keys_and_shares(cfg, secrets)
    uploads, peers = {}, {}
    for i in range(4):
        uploads[i], peers[i] = secure.mask_input(cfg, i, x[i], bits, secrets=secrets / f"c{i}")
        assert peers[i] == [j for j in range(N) if j != i]
    # Execute
    assert unmasking.waiting_for(cfg) == "round 0: the survivor list is not written yet"
    survivors, dropped = unmasking.survivors(cfg, peers)
    for i in (0, 1):
        secure.reveal(cfg, i, secrets=secrets / f"c{i}")
    assert unmasking.waiting_for(cfg) == ("round 0: 2 of the 3 unmask answers needed are in; "
                                       "waiting for `supermask secagg unmask` of clients 2, 3")
    secure.reveal(cfg, 2, secrets=secrets / "c2")
    assert unmasking.waiting_for(cfg) is None
    total = unmasking.unmask_sum(cfg, masking.add_inputs(uploads, bits), bits)
    # Assert: the exact plaintext sum of the survivors
    assert (survivors, dropped) == ([0, 1, 2, 3], [4])
    assert encoding.decode_unsigned(total["mask/x"]).tolist() == sum((i + 1) * plain[i][0] for i in range(4)).tolist()
    head = encoding.decode_fixed_sum(total["head/y"], bits["head/y"], sum(i + 1 for i in range(4)))
    assert np.abs(head - sum((i + 1) * plain[i][1] for i in range(4)) / 10).max() <= encoding.FIXED.resolution / 2
    # no private key or self-mask seed, raw or hex, in any file under run_dir
    secret_values = []
    for i in range(N):
        state = json.loads((secrets / f"c{i}" / "round_000.json").read_bytes())
        for key in ("channel_private", "mask_private", "self_seed"):
            secret_values += [bytes.fromhex(state[key]), state[key].encode()]
        assert stat.S_IMODE((secrets / f"c{i}" / "round_000.json").stat().st_mode) == 0o600
        assert stat.S_IMODE((secrets / f"c{i}").stat().st_mode) == 0o700
    files = [p for p in Path(cfg.run_dir).rglob("*") if p.is_file()]
    assert len([p for p in files if "secagg" in p.parts]) == 5 + 5 + 1 + 3  # keys, shares, survivors, unmask: the scan sees them
    for p in files:
        data = p.read_bytes()
        assert not [s for s in secret_values if s in data], p
    # the scan can fail: the secrets file itself holds them
    assert bytes.fromhex(json.loads((secrets / "c0" / "round_000.json").read_bytes())["self_seed"]).hex().encode() in (secrets / "c0" / "round_000.json").read_bytes()


def test_steps_are_rerunnable_and_keys_belong_to_their_secrets(secure_run):
    _, cfg, secrets = secure_run
    first = Path(secure.publish_keys(cfg, 0, secrets=secrets / "c0")).read_bytes()
    assert Path(secure.publish_keys(cfg, 0, secrets=secrets / "c0")).read_bytes() == first
    with pytest.raises(SecureAggregationError, match="was published from another secrets directory"):
        secure.publish_keys(cfg, 0, secrets=secrets / "elsewhere")
    with pytest.raises(SecureAggregationError, match="inside run_dir"):
        secure.publish_keys(cfg, 1, secrets=Path(cfg.run_dir) / "secrets")
    with pytest.raises(SecureAggregationError, match=r"round 0: keys of 1 of 5 participants are in, fewer than the threshold 3; missing clients 1, 2, 3, 4"):
        secure.share_keys(cfg, 0, secrets=secrets / "c0")


def test_a_server_that_relists_a_live_client_as_dropped_gets_nothing(secure_run):
    _, cfg, secrets = secure_run
    bits, _, x = _inputs(cfg)
    _keys_and_shares(cfg, secrets)
    peers = {i: secure.mask_input(cfg, i, x[i], bits, secrets=secrets / f"c{i}")[1] for i in range(N)}
    unmasking.survivors(cfg, peers)
    secure.reveal(cfg, 1, secrets=secrets / "c1")
    # the server replaces the survivor list: client 2 "dropped", asking for its mask-key share
    layout = Layout(cfg.run_dir)
    listed = json.loads(Path(layout.survivors_path(0)).read_text())
    listed.update(survivors=[0, 1, 3, 4], dropped=[2])
    Path(layout.survivors_path(0)).write_text(json.dumps(listed))
    with pytest.raises(SecureAggregationError, match="client 1 refuses to unmask: it already revealed the other kind of share of clients 2 "):
        secure.reveal(cfg, 1, secrets=secrets / "c1")
    assert 2 not in unmasking.unmask_answers(secure.open_secure_round(cfg, 0))[1]["pair"]


def test_tampered_shares_are_named(secure_run):
    _, cfg, secrets = secure_run
    _keys_and_shares(cfg, secrets)
    path = Path(Layout(cfg.run_dir).secagg_path(0, "shares", 3))
    msg = json.loads(path.read_text())
    sealed = msg["holders"]["1"]["sealed"]
    msg["holders"]["1"]["sealed"] = sealed[:-2] + ("00" if sealed[-2:] != "00" else "01")
    path.write_text(json.dumps(msg))
    with pytest.raises(SecureAggregationError, match="round 0: the shares from client 3 to client 1 fail authentication"):
        secure.holdings(secure.open_secure_round(cfg, 0), 1, json.loads((secrets / "c1" / "round_000.json").read_text()))
    msg["holders"]["1"]["extra"] = "00"
    path.write_text(json.dumps(msg))
    with pytest.raises(SecureAggregationError, match=r"client_003.json': field 'holders'\[1\]: unknown fields \['extra'\]"):
        secure.shares_messages(secure.open_secure_round(cfg, 0))


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_steps_and_one_line_refusals(secure_run):
    path, cfg, secrets = secure_run
    for i in range(N):
        assert _cli("secagg", "keys", "--config", path, "--client", i, "--secrets", secrets / f"c{i}").exit_code == 0
    result = _cli("secagg", "shares", "--config", path, "--client", 0, "--secrets", secrets / "c0", "--wait", 1)
    assert result.exit_code == 0 and "shares/client_000.json" in result.output
    result = _cli("secagg", "unmask", "--config", path, "--client", 0, "--secrets", secrets / "c0")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "round 0: no survivor list yet" in lines[0], result.output
    result = _cli("secagg", "keys", "--config", path, "--client", 7, "--secrets", secrets / "c7")
    assert result.exit_code == 2 and "client 7 is not a participant" in result.output


def test_config_section_digest_and_non_sum_rules(tiny_config):
    plain = load_config(tiny_config("threshold"))
    on = load_config(tiny_config("threshold", secure_aggregation={"enabled": True}))
    assert config_digest(plain) == config_digest(load_config(tiny_config("threshold", secure_aggregation={"enabled": False, "threshold": 4})))
    assert config_digest(on) != config_digest(plain)
    for rule in ("median", "trimmed_mean", "filtered", "capped"):
        with pytest.raises(Exception, match=f"federation.aggregator '{rule}' is not an integer-weighted sum"):
            load_config(tiny_config("threshold", federation={"aggregator": rule}, secure_aggregation={"enabled": True}))


def test_weights_come_from_the_published_counts(secure_run):
    _, cfg, secrets = secure_run
    for i in range(N):
        secure.publish_keys(cfg, i, secrets=secrets / f"c{i}")
    sr = secure.open_secure_round(cfg, 0)
    keys = secure.public_keys(sr)
    counts = {c: k["num_examples"] for c, k in keys.items()}
    assert sum(counts.values()) == 96 and secure.weights(sr, keys) == counts  # the tiny pool, no count capped (gcd 1)
    median = sorted(counts.values())[(N - 1) // 2]
    keys[2]["num_examples"] = 1_000_000  # a client claiming a million examples weighs 3 median clients
    w = secure.weights(sr, keys)
    assert w[2] * counts[0] == 3 * median * w[0]  # weights stay proportional to the capped counts
    for c in keys:
        keys[c]["num_examples"] = 320
    assert secure.weights(sr, keys) == {c: 1 for c in keys}  # equal counts: weight 1 each, the smallest k
    keys[2]["num_examples"] = 0
    with pytest.raises(SecureAggregationError, match="round 0: client 2 claims 0 examples, outside 1..10000000"):
        secure.weights(sr, keys)


def _identities(directory: Path) -> dict[int, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory.mkdir()
    private = {}
    for i in range(N):
        key = Ed25519PrivateKey.generate()
        private[i] = directory / f"private_{i}.pem"
        private[i].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        (directory / f"client_{i:03d}.pem").write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private


def test_registered_identities_catch_substituted_keys(secure_run, tmp_path):
    _, cfg, secrets = secure_run
    ids = tmp_path / "ids"
    private = _identities(ids)
    for i in range(N):
        secure.publish_keys(cfg, i, secrets=secrets / f"c{i}", identity_key=private[i], identities=ids)
    secure.share_keys(cfg, 0, secrets=secrets / "c0")  # every signature verifies
    # the aggregator swaps client 3's keys for a pair of its own (re-signing is impossible without 3's key)
    path = Path(Layout(cfg.run_dir).secagg_path(0, "keys", 3))
    msg = json.loads(path.read_text())
    from supermask_cli.secagg import agreement
    msg["mask_public"] = agreement.public_key(agreement.new_private_key()).hex()
    path.write_text(json.dumps(msg))
    with pytest.raises(SecureAggregationError, match="client_003.json': the signature does not verify with the registered identity"):
        secure.share_keys(cfg, 1, secrets=secrets / "c1")
    msg["signature"] = ""
    path.write_text(json.dumps(msg))
    with pytest.raises(SecureAggregationError, match="client_003.json': unsigned, but identities are registered"):
        secure.share_keys(cfg, 1, secrets=secrets / "c1")
    # without registered identities the same substitution goes unnoticed: why README says to register them
    assert secure.public_keys(secure.open_secure_round(cfg, 0))[3]["mask_public"].hex() == msg["mask_public"]


def test_launchers_that_do_not_drive_the_steps_yet_refuse(secure_run):
    from supermask_cli.launch import slurm

    path, cfg, _ = secure_run
    with pytest.raises(Exception, match="secure_aggregation: `supermask slurm` does not submit its steps yet"):
        slurm.options(cfg, path, [], rounds=None, array_parallelism=None, sbatch_args=[], gpus_per_client=None,
                      aggregate_wait=0, directory=None)
