"""Privacy maths: per-example gradients against a naive loop, clipping, noise, the accountant,
client-level bounds and the discrete Gaussian."""

from __future__ import annotations

import math

import pytest
import torch

from supermask_cli.config import config_digest, config_from_dict
from supermask_cli.errors import SupermaskError
from supermask_cli.mask.inject import inject
from supermask_cli.model import load_base_model
from supermask_cli.privacy import accountant, client_level, dpsgd
from supermask_cli.privacy.per_example import PerExampleGrads
from supermask_cli.local_training import disable_dropout

TEXTS = ["good movie", "the plot was awful and boring", "a film", "great fun", "worst film"]


def _masked_model(tiny_model, kind: str):
    base = load_base_model(
        str(tiny_model), revision=None, num_labels=2, regression=False, target_patterns=None, head_names=None, seed=0
    )
    layers = inject(base.model, base.targets, kind, tau=0.0)
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in layers.values():
            if kind == "scaling":
                layer.scale.copy_(1 + 0.3 * torch.randn_like(layer.scale))
            else:  # mixed signs: some weights dropped (threshold), probs away from 0 and 1 (bernoulli)
                layer.scores.copy_(torch.randn_like(layer.scores))
    head = [p for n, p in base.model.named_parameters() if n.startswith("classifier.")]
    for p in head:
        p.requires_grad_(True)
    base.model.train()
    disable_dropout(base.model)
    params = [p for layer in layers.values() for p in layer.parameters() if p.requires_grad] + head
    return base, params


def _grads_of(model, params, batch, seed):
    torch.manual_seed(seed)  # the same bernoulli mask samples in every forward
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return [p.grad.clone() for p in params]


def _per_example_of_texts(tiny_model, kind: str, seed: int):
    """A masked tiny model, the labelled batch of TEXTS, and its per-example gradients by hooks."""
    base, params = _masked_model(tiny_model, kind)
    batch = base.tokenizer(TEXTS, padding=True, return_tensors="pt")
    batch["labels"] = torch.tensor([1, 0, 1, 1, 0])
    hooks = PerExampleGrads(base.model)
    _grads_of(base.model, params, batch, seed=seed)
    computed = hooks.per_example(len(TEXTS))
    hooks.close()
    return base, params, batch, computed


@pytest.mark.parametrize("kind", ["bernoulli", "threshold", "scaling"])
def test_per_example_gradients_match_a_loop_over_single_examples(tiny_model, kind):
    base, params, batch, computed = _per_example_of_texts(tiny_model, kind, seed=7)
    assert set(computed) == set(params)
    for i, text in enumerate(TEXTS):
        single = base.tokenizer([text], return_tensors="pt")
        single["labels"] = batch["labels"][i : i + 1]
        for p, expected in zip(params, _grads_of(base.model, params, single, seed=7)):
            assert torch.allclose(computed[p][i], expected, atol=1e-6, rtol=1e-4), (kind, p.shape)


def test_per_example_gradients_refuse_a_non_linear_trainable_module(tiny_model):
    base, _ = _masked_model(tiny_model, "threshold")
    base.model.bert.embeddings.LayerNorm.weight.requires_grad_(True)
    with pytest.raises(SupermaskError, match="LayerNorm 'bert.embeddings.LayerNorm'"):
        PerExampleGrads(base.model)


def test_private_step_clips_every_example_and_divides_by_the_batch(tiny_model):
    base, params, batch, per_example = _per_example_of_texts(tiny_model, "bernoulli", seed=3)
    norms = torch.stack([per_example[p].flatten(1).pow(2).sum(1) for p in params]).sum(0).sqrt()
    clip = float(norms.median())  # some examples above the bound, some below
    assert (norms > clip).any() and (norms < clip).any()
    clipped = dpsgd.clipped_sum([per_example[p] for p in params], clip)
    factors = dpsgd.clip_factors(norms, clip)
    assert torch.all(norms * factors <= clip * (1 + 1e-6))  # the bound holds on every example
    assert torch.allclose(factors[norms < clip], torch.ones(int((norms < clip).sum())), atol=1e-5)

    # no noise: ordinary batches, the clipped sum divided by their size (not by q·n = 2.5)
    step = dpsgd.PrivateStep(base.model, params, dpsgd.ExamplePrivacy(0.0, clip, 0.5), len(TEXTS), "cpu")
    torch.manual_seed(3)
    base.model.zero_grad(set_to_none=True)
    step.backward(base.model(**batch).loss, len(TEXTS))
    step.close()
    for p, total in zip(params, clipped):
        assert torch.allclose(p.grad, total / len(TEXTS), atol=1e-7, rtol=1e-4)


def test_private_step_noise_has_std_sigma_times_clip_over_the_expected_batch():
    param = torch.nn.Parameter(torch.zeros(200_000))
    model = torch.nn.Module()
    privacy = dpsgd.ExamplePrivacy(noise_multiplier=1.5, max_grad_norm=0.4, sample_rate=0.25)
    step = dpsgd.PrivateStep(model, [param], privacy, n=40, device="cpu")
    step.backward(None, 0)  # an empty Poisson batch: noise alone
    expected_std = 1.5 * 0.4 / (0.25 * 40)
    assert abs(float(param.grad.mean())) < 5 * expected_std / math.sqrt(param.numel())
    assert float(param.grad.std()) == pytest.approx(expected_std, rel=0.01)  # 5 standard errors


def test_add_noise_variance_matches_sigma_squared_clip_squared():
    total = torch.full((100_000,), 2.0)
    noisy = dpsgd.add_noise(total, 0.7 * 3.0, torch.Generator().manual_seed(0))
    assert float((noisy - 2.0).var()) == pytest.approx((0.7 * 3.0) ** 2, rel=0.02)


def test_poisson_batches_include_each_example_at_the_sample_rate():
    batches = dpsgd.poisson_batches(50, 0.2, 400, torch.Generator().manual_seed(0))
    sizes = torch.tensor([len(b) for b in batches], dtype=torch.float64)
    assert float(sizes.mean()) == pytest.approx(10.0, rel=0.05)
    assert float(sizes.var()) == pytest.approx(50 * 0.2 * 0.8, rel=0.25)  # binomial, not fixed-size
    assert all(len(set(b.tolist())) == len(b) for b in batches)


def test_secret_generators_differ_between_calls():
    a, b = dpsgd.secret_generator(), dpsgd.secret_generator()
    assert not torch.equal(torch.randn(8, generator=a), torch.randn(8, generator=b))


# ------------------------------------------------------------------------------ accountant


def test_epsilon_is_zero_before_any_step_unbounded_without_noise_and_grows_with_steps():
    assert accountant.epsilon("rdp", 1.0, 0.1, 0, 1e-5) == 0.0
    assert accountant.epsilon("rdp", 0.0, 0.1, 10, 1e-5) is None
    e10, e100 = (accountant.epsilon("rdp", 1.0, 0.1, s, 1e-5) for s in (10, 100))
    assert 0 < e10 < e100


def test_epsilon_matches_opacus_directly():
    from opacus.accountants import PRVAccountant, RDPAccountant

    for name, cls in (("rdp", RDPAccountant), ("prv", PRVAccountant)):
        acc = cls()
        acc.history = [(1.1, 0.05, 300)]
        assert accountant.epsilon(name, 1.1, 0.05, 300, 1e-5) == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-9)


def test_noise_for_a_target_lands_just_under_it():
    sigma = accountant.noise_multiplier("rdp", 3.0, 1e-5, 0.1, 200)
    assert 2.9 <= accountant.epsilon("rdp", sigma, 0.1, 200, 1e-5) <= 3.0


def test_gaussian_at_sample_rate_one_matches_the_closed_form_rdp():
    # One Gaussian release with multiplier z has RDP α/(2z²); ε = min_α αT/(2z²) + log(1/δ)/(α−1) (Mironov 2017)
    z, steps, delta = 4.0, 5, 1e-5
    alphas = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    bound = min(a * steps / (2 * z * z) + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1) for a in alphas)
    assert accountant.epsilon("rdp", z, 1.0, steps, delta) == pytest.approx(bound, rel=1e-6)


# ------------------------------------------------------------------------------ config


def _cfg(**privacy):
    return config_from_dict({"privacy": privacy}, "test")


def test_privacy_config_needs_exactly_one_of_noise_and_target():
    with pytest.raises(SupermaskError, match="exactly one of privacy.noise_multiplier and privacy.target_epsilon"):
        _cfg(mode="example")
    with pytest.raises(SupermaskError, match="exactly one"):
        _cfg(mode="example", noise_multiplier=1.0, target_epsilon=3.0)
    with pytest.raises(SupermaskError, match="max_grad_norm"):
        _cfg(mode="example", noise_multiplier=1.0, max_grad_norm=None)
    assert _cfg(mode="example", noise_multiplier=0.0, max_grad_norm=None).privacy.max_grad_norm is None
    with pytest.raises(SupermaskError, match="federation.aggregator must be mean"):
        config_from_dict({"privacy": {"mode": "client", "noise_multiplier": 1.0}, "federation": {"aggregator": "median"}}, "t")


def test_privacy_enters_the_config_digest_only_when_on():
    plain = config_digest(_cfg())
    assert config_digest(_cfg(delta=1e-6)) == plain  # off: old runs keep their digest
    on = config_digest(_cfg(mode="example", noise_multiplier=1.0))
    assert on != plain and on != config_digest(_cfg(mode="example", noise_multiplier=1.1))


# ------------------------------------------------------------------------------ client level


def test_bound_flips_keeps_the_highest_priority_flips_and_at_most_k():
    ref = {"a": torch.tensor([True, True, False, False]), "b": torch.tensor([False, True])}
    mask = {"a": torch.tensor([False, False, True, False]), "b": torch.tensor([True, True])}  # 4 flips
    priority = {"a": torch.tensor([0.1, 0.9, 0.2, 0.0]), "b": torch.tensor([0.5, 0.0])}
    out = client_level.bound_flips(mask, ref, 2, priority)
    assert out["a"].tolist() == [True, False, False, False] and out["b"].tolist() == [True, True]
    first = client_level.bound_flips(mask, ref, 3)  # no priority: the first three in order
    assert first["a"].tolist() == [False, False, True, False] and first["b"].tolist() == [False, True]
    assert client_level.bound_flips(mask, ref, 4) is mask


def test_clip_l2_scales_jointly_only_when_above_the_bound():
    t = {"x": torch.tensor([3.0]), "y": torch.tensor([4.0])}
    out = client_level.clip_l2(t, 1.0)
    assert out["x"].item() == pytest.approx(0.6) and out["y"].item() == pytest.approx(0.8)
    assert client_level.clip_l2(t, 10.0)["y"].item() == 4.0


def test_discrete_gaussian_is_integer_centred_with_variance_sigma_squared():
    x = client_level.discrete_gaussian((200_000,), 4.5, torch.Generator().manual_seed(0))
    assert x.dtype == torch.int64
    assert abs(float(x.double().mean())) < 0.05
    assert float(x.double().var()) == pytest.approx(4.5**2, rel=0.02)
    p0 = float((x == 0).double().mean())  # P(0) = 1 / Σ_k exp(-k²/2σ²)
    norm = sum(math.exp(-k * k / (2 * 4.5**2)) for k in range(-60, 61))
    assert p0 == pytest.approx(1 / norm, rel=0.05)


def test_noisy_mean_without_noise_is_the_bounded_mean_over_planned_clients():
    g = {"probs/l": torch.tensor([0.9, 0.9, 0.1, 0.1]), "head/w": torch.tensor([1.0, 1.0])}
    clients = [
        {"mask/l": torch.tensor([False, False, True, True]), "head/w": torch.tensor([4.0, 5.0])},  # 4 flips
        {"mask/l": torch.tensor([True, True, False, True]), "head/w": torch.tensor([1.0, 1.0])},
    ]
    out = client_level.noisy_mean(
        "bernoulli", g, clients, noise_multiplier=0.0, max_flips=2, client_clip=1.0, planned_clients=4,
        generator=torch.Generator().manual_seed(0),
    )
    # client 0 keeps its first two flips; client 1 has one flip; ref (1,1,0,0) + (-1,-1,0,1)/4
    assert out["mask/l"].tolist() == pytest.approx([0.75, 0.75, 0.0, 0.25])
    # head: update (3, 4) clipped to norm 1 = (0.6, 0.8); the other client's is 0; / 4 planned
    assert out["head/w"].tolist() == pytest.approx([1.15, 1.2])


def test_noisy_mean_noise_std_is_z_root_parts_times_each_bound():
    g = {"mask/l": torch.zeros(100_000, dtype=torch.bool), "head/w": torch.zeros(100_000)}
    clients = [{"mask/l": torch.zeros(100_000, dtype=torch.bool), "head/w": torch.zeros(100_000)}]
    out = client_level.noisy_mean(
        "threshold", g, clients, noise_multiplier=0.5, max_flips=64, client_clip=2.0, planned_clients=1,
        generator=torch.Generator().manual_seed(0),
    )
    assert float(out["mask/l"].std()) == pytest.approx(0.5 * math.sqrt(2) * 8, rel=0.02)
    assert float(out["head/w"].std()) == pytest.approx(0.5 * math.sqrt(2) * 2.0, rel=0.02)
    with pytest.raises(SupermaskError, match="below 3.0"):
        client_level.noisy_mean(
            "threshold", g, clients, noise_multiplier=0.1, max_flips=4, client_clip=2.0, planned_clients=1,
            generator=torch.Generator().manual_seed(0),
        )


# ------------------------------------------------------------------------------ ledger


def test_ledger_counts_only_the_rounds_a_client_takes_part_in_and_never_less_than_its_last_file():
    from supermask_cli.privacy import ledger
    from supermask_cli.sampling import participants

    cfg = config_from_dict({"seed": 3, "federation": {"num_clients": 4, "clients_per_round": 2, "rounds": 6},
                            "privacy": {"mode": "example", "noise_multiplier": 1.0}}, "t")
    taken = [r for r in range(6) if 1 in participants(4, 2, 3, r)]
    assert 0 < len(taken) < 6  # client 1 sits some rounds out
    dp = dpsgd.ExamplePrivacy(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.1)
    last = taken[-1]
    record = ledger.client_file_record(cfg, None, 1, last, dp, 5, known=[])
    assert record.steps == 5 * len(taken) and [r.round for r in record.history] == taken
    assert record.epsilon == accountant.epsilon("rdp", 1.0, 0.1, 5 * len(taken), 1e-5)
    assert record.round_epsilon == accountant.epsilon("rdp", 1.0, 0.1, 5, 1e-5)
    # trained outside the schedule earlier (its last file, of the format without history, says more): it counts
    older = record.model_copy(update={"steps": 100, "history": []})
    known = ledger.file_history(older, taken[-2], cfg, 1)
    assert ledger.client_file_record(cfg, None, 1, last, dp, 5, known=known).steps == 105
    # target ε: the noise is set for every step the client is scheduled for in the whole run
    target = config_from_dict({"seed": 3, "federation": {"num_clients": 4, "clients_per_round": 2, "rounds": 6},
                               "privacy": {"mode": "example", "target_epsilon": 2.0}}, "t")
    sigma = ledger.example_noise(target, 1, 0.1, 5)
    assert 1.98 <= accountant.epsilon("rdp", sigma, 0.1, 5 * len(taken), 1e-5) <= 2.0
    sparse = config_from_dict({"seed": 0, "federation": {"num_clients": 4, "clients_per_round": 1, "rounds": 2},
                               "privacy": {"mode": "example", "target_epsilon": 2.0}}, "t")
    assert ledger.participations(sparse, 1, 1) == 0  # scheduled for no round, yet trained: noised for this round
    assert 1.98 <= accountant.epsilon("rdp", ledger.example_noise(sparse, 1, 0.1, 5), 0.1, 5, 1e-5) <= 2.0


def test_client_mode_noise_covers_the_client_taking_part_most():
    from supermask_cli.privacy import ledger

    cfg = config_from_dict({"seed": 1, "federation": {"num_clients": 5, "clients_per_round": 2, "rounds": 8},
                            "privacy": {"mode": "client", "target_epsilon": 4.0}}, "t")
    most = max(ledger.participations(cfg, c, 7) for c in range(5))
    assert most < 8
    z = ledger.client_noise(cfg)
    assert 3.96 <= accountant.epsilon("rdp", z, 1.0, most, 1e-5) <= 4.0


def test_private_step_refuses_noise_without_clipping():
    with pytest.raises(ValueError, match="max_grad_norm"):
        dpsgd.PrivateStep(torch.nn.Module(), [], dpsgd.ExamplePrivacy(1.0, None, 0.1), 10, "cpu")
