"""A client's privacy policy: loading (errors naming file and key) and its checks of a run's
privacy and of one release against the budget (ε recomputed with Opacus directly)."""

from __future__ import annotations

import pytest
from opacus.accountants import RDPAccountant

from supermask_cli.config import config_from_dict
from supermask_cli.errors import SupermaskError
from supermask_cli.privacy.policy import PolicyRefusal, check_config, check_release, load_policy, load_policy_dir


def _policy(tmp_path, text: str, name: str = "policy.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return load_policy(path)


def _run(privacy: dict):
    return config_from_dict({"privacy": privacy}, "test")


def _opacus(history, delta=1e-5):
    acc = RDPAccountant()
    acc.history = history
    return acc.get_epsilon(delta=delta)


def test_a_policy_file_loads_with_its_ledger_relative_to_the_file(tmp_path):
    policy = _policy(tmp_path, "privacy: {mode: example, max_epsilon: 3.0, delta: 1.0e-5}\nledger: ledger-3\n")
    assert (policy.privacy.mode, policy.privacy.max_epsilon, policy.privacy.accountant) == ("example", 3.0, "rdp")
    assert policy.ledger == tmp_path / "ledger-3" and policy.source.endswith("policy.yaml")


@pytest.mark.parametrize("text, message", [
    ("privacy: {mode: none, max_epsilon: 3}\n", "policy key 'privacy.mode'"),
    ("privacy: {mode: example}\n", "privacy.max_epsilon, privacy.min_noise_multiplier or both"),
    ("privacy: {mode: example, max_epsilon: -1}\n", "policy key 'privacy.max_epsilon'"),
    ("privacy: {mode: example, max_epsilon: 3, epsilon: 2}\n", "unknown policy key 'privacy.epsilon'"),
    ("- a list\n", "a YAML mapping"),
    ("privacy: [\n", "not valid YAML"),
])
def test_a_bad_policy_file_is_one_line_naming_file_and_key(tmp_path, text, message):
    with pytest.raises(SupermaskError, match="policy.yaml") as info:
        _policy(tmp_path, text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_directory_of_policies_needs_one_per_client(tmp_path):
    for c in (0, 2):
        (tmp_path / f"client-{c}.yaml").write_text("privacy: {mode: example, max_epsilon: 3}\nledger: l\n")
    with pytest.raises(SupermaskError, match=r"no policy for client\(s\) \[1\]"):
        load_policy_dir(tmp_path, 3)
    assert set(load_policy_dir(tmp_path, 1)) == {0}


@pytest.mark.parametrize("privacy, key", [
    ({"mode": "none"}, "privacy.mode: the run asks for 'none'"),
    ({"mode": "example", "noise_multiplier": 1.0, "delta": 1e-3}, "privacy.delta: the run's δ 0.001 is above this client's 1e-05"),
    ({"mode": "example", "noise_multiplier": 1.0, "max_grad_norm": 5.0}, "privacy.max_grad_norm: the run clips at 5.0"),
])
def test_a_weaker_run_is_refused(tmp_path, privacy, key):
    policy = _policy(tmp_path, "privacy: {mode: example, max_epsilon: 3, max_grad_norm: 1.0}\nledger: l\n")
    with pytest.raises(PolicyRefusal, match="refused before training") as info:
        check_config(policy, _run(privacy))
    assert key in str(info.value)


def test_client_level_is_at_least_example_level_and_not_the_other_way(tmp_path):
    example = _policy(tmp_path, "privacy: {mode: example, max_epsilon: 3}\n", "e.yaml")
    client = _policy(tmp_path, "privacy: {mode: client, max_epsilon: 3}\n", "c.yaml")
    check_config(example, _run({"mode": "client", "noise_multiplier": 1.0}))
    with pytest.raises(PolicyRefusal, match="the run asks for 'example', this client accepts 'client'"):
        check_config(client, _run({"mode": "example", "noise_multiplier": 1.0}))


def test_the_budget_refuses_the_release_that_would_exceed_it_and_names_the_numbers(tmp_path):
    policy = _policy(tmp_path, "privacy: {mode: example, max_epsilon: 11.0}\n")
    spent = [(1.0, 1.0, 4)]
    assert check_release(policy, spent, (1.0, 0.125, 4), 1, "ledger L") == pytest.approx(
        _opacus([(1.0, 1.0, 4), (1.0, 0.125, 4)]))  # 10.962 ≤ 11
    tight = _policy(tmp_path, "privacy: {mode: example, max_epsilon: 10.9}\n", "tight.yaml")
    with pytest.raises(PolicyRefusal) as info:
        check_release(tight, spent, (1.0, 0.125, 4), 1, "ledger L")
    message = str(info.value)
    assert "tight.yaml: privacy.max_epsilon 10.9: round 1's release (σ 1, q 0.125, 4 steps)" in message
    assert "to 10.962 at δ 1e-05" in message and "spent so far 10.726 in ledger L" in message


def test_noise_below_the_smallest_sigma_or_no_noise_is_refused(tmp_path):
    policy = _policy(tmp_path, "privacy: {mode: example, min_noise_multiplier: 0.8}\n")
    assert check_release(policy, [], (0.8, 0.1, 100), 0, "L") == pytest.approx(_opacus([(0.8, 0.1, 100)]))
    with pytest.raises(PolicyRefusal, match="privacy.min_noise_multiplier: round 2's release has σ 0.5, below"):
        check_release(policy, [], (0.5, 0.1, 100), 2, "L")
    with pytest.raises(PolicyRefusal, match="no noise"):
        check_release(policy, [], (0.0, 0.1, 100), 0, "L")

