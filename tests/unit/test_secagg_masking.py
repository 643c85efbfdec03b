"""The protocol end to end in one process: exact sums with dropouts, too few survivors, uniform
masked words, the falsely-dropped-client attack, and wrong shares named."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from supermask_cli.errors import SecureAggregationError
from supermask_cli.secagg import agreement, encoding, masking, recovery, simulate
from supermask_cli.secagg.agreement import Context

CTX = Context("run-digest", 2)
N, T = 7, 4
WEIGHTS = {i: w for i, w in enumerate([3, 1, 4, 1, 5, 9, 2])}


def _inputs():
    """Each client's bernoulli-like mask (0/1) times its weight, and a fixed-point head."""
    rng = np.random.default_rng(1)
    total = sum(WEIGHTS.values())
    bits = {"mask/layer": encoding.sum_bits(total, 1), "head/w": encoding.fixed_bits(total)}
    plain = {i: (rng.integers(0, 2, 333).astype(np.uint8), rng.normal(0, 1, 37)) for i in WEIGHTS}
    inputs = {i: {"mask/layer": encoding.encode_unsigned(m, WEIGHTS[i], bits["mask/layer"], what="m"),
                  "head/w": encoding.encode_fixed(h, WEIGHTS[i], bits["head/w"], what="h")} for i, (m, h) in plain.items()}
    return inputs, bits, plain


@pytest.mark.parametrize("dropped", [set(), {5}, {0, 3, 6}], ids=["none", "one", "n-t"])
def test_unmasked_sum_equals_the_plaintext_sum_exactly(dropped):
    inputs, bits, plain = _inputs()
    total = simulate.run(CTX, inputs, bits, T, dropped=dropped)
    survivors = [i for i in WEIGHTS if i not in dropped]
    want = sum(WEIGHTS[i] * plain[i][0].astype(np.int64) for i in survivors)
    assert encoding.decode_unsigned(total["mask/layer"]).tolist() == want.tolist()
    w = sum(WEIGHTS[i] for i in survivors)
    head = encoding.decode_fixed_sum(total["head/w"], bits["head/w"], w)
    exact = sum(WEIGHTS[i] * plain[i][1] for i in survivors) / w
    assert np.abs(head - exact).max() <= encoding.FIXED.resolution / 2


def test_survivors_that_answer_late_are_not_needed_beyond_t():
    inputs, bits, plain = _inputs()
    total = simulate.run(CTX, inputs, bits, T, dropped={1}, silent={0, 2})  # 6 uploads, 4 answers
    want = sum(WEIGHTS[i] * plain[i][0].astype(np.int64) for i in WEIGHTS if i != 1)
    assert encoding.decode_unsigned(total["mask/layer"]).tolist() == want.tolist()


def test_fewer_than_t_survivors_names_the_round_and_the_missing_clients():
    inputs, bits, _ = _inputs()
    with pytest.raises(SecureAggregationError, match=r"round 2: 3 of 7 participants survived, fewer than the threshold 4; "
                                                     r"cannot unmask; missing clients 0, 2, 4, 6"):
        rnd = simulate.setup(CTX, sorted(inputs), T)
        recovery.recover(CTX, T, rnd.participants, {1, 3, 5}, {0, 2, 4, 6}, {}, rnd.digests, {})


def test_fewer_than_t_answers_names_who_did_not_answer():
    inputs, bits, _ = _inputs()
    with pytest.raises(SecureAggregationError, match="round 2: 3 unmask answers, the threshold is 4; missing answers from clients 0, 1, 2, 3"):
        simulate.run(CTX, inputs, bits, T, silent={0, 1, 2, 3})


def _chi2_p(words: np.ndarray, bits: int) -> float:
    counts = np.bincount(words.astype(np.int64), minlength=2**bits)
    return chisquare(counts).pvalue


@pytest.mark.parametrize("bits", [5, 8])
def test_one_masked_upload_is_uniform_and_its_plain_input_is_not(bits):
    # Prepare: a sparse 0/1 mask — as skewed as real masks — masked as client 0 of 3
    ctx = Context("run-digest", 0)
    rnd = simulate.setup(ctx, [0, 1, 2], 2)
    x = {"mask/m": (np.random.default_rng(0).random(2**15) < 0.05).astype(encoding.word_dtype(bits))}
    # Execute
    y = simulate.masked_input(rnd, 0, x, {"mask/m": bits})["mask/m"]
    # Assert: the masked words pass a chi-square test of uniformity, the input fails it
    assert _chi2_p(y, bits) > 1e-3
    assert _chi2_p(x["mask/m"], bits) < 1e-12
    # and with the self mask alone (no peers) the words are uniform too: the double mask, not the pairs, hides x
    alone = masking.mask(x, {"mask/m": bits}, 0, rnd.clients[0].self_seed, {})["mask/m"]
    assert _chi2_p(alone, bits) > 1e-3


def test_a_client_falsely_listed_as_dropped_learns_the_server_nothing():
    rnd = simulate.setup(CTX, list(range(N)), T)
    everyone = set(range(N))
    honest = rnd.clients[4]
    # listed both as survivor and dropped in one request
    with pytest.raises(SecureAggregationError, match="round 2: client 4 refuses to unmask: clients 2 are listed both"):
        recovery.answer(CTX, 4, T, honest.holdings, everyone, {2})
    # a first request says client 2 survived (self share revealed) ...
    shares, revealed = recovery.answer(CTX, 4, T, honest.holdings, everyone, set())
    assert set(shares["self"]) == everyone and shares["pair"] == {}
    # ... a second says it dropped, asking for its mask key share too: refused, naming client 2
    with pytest.raises(SecureAggregationError, match="already revealed the other kind of share of clients 2 "):
        recovery.answer(CTX, 4, T, honest.holdings, everyone - {2}, {2}, revealed)
    # the same request again is answered identically (re-runnable)
    again, _ = recovery.answer(CTX, 4, T, honest.holdings, everyone, set(), revealed)
    assert again == shares
    # a client told it dropped, although alive, refuses
    with pytest.raises(SecureAggregationError, match="client 4 refuses to unmask: it is listed as dropped"):
        recovery.answer(CTX, 4, T, honest.holdings, everyone - {4}, {4})
    # a client listed whose shares it does not hold (its keys came late) gets nothing revealed
    late, _ = recovery.answer(CTX, 4, T, {k: v for k, v in honest.holdings.items() if k != 6}, everyone - {6}, {6})
    assert set(late["self"]) == everyone - {6} and late["pair"] == {}
    with pytest.raises(SecureAggregationError, match="3 survivors are fewer than the threshold 4"):
        recovery.answer(CTX, 4, T, honest.holdings, {1, 4, 5}, everyone - {1, 4, 5})


def _answers(rnd, survivors):
    dropped = set(rnd.participants) - survivors
    return {i: recovery.answer(CTX, i, T, rnd.clients[i].holdings, survivors, dropped)[0] for i in survivors}


def test_a_wrong_share_is_named_by_holder_and_owner():
    rnd = simulate.setup(CTX, list(range(N)), T)
    survivors = set(range(N)) - {6}
    public = {i: rnd.public(i)[1] for i in rnd.participants}
    answers = _answers(rnd, survivors)
    share = answers[3]["pair"][6]
    answers[3]["pair"][6] = bytes([share[0] ^ 0x80]) + share[1:]
    with pytest.raises(SecureAggregationError, match="round 2: client 3's pair share of client 6 does not match the digest client 6 published"):
        recovery.recover(CTX, T, rnd.participants, survivors, {6}, answers, rnd.digests, public)
    answers = _answers(rnd, survivors)
    answers[5]["self"][6] = answers[5]["pair"][6]  # a self share of a dropped client: never asked for
    with pytest.raises(SecureAggregationError, match="client 5's unmask answer has self shares of clients 6, which were not asked for"):
        recovery.recover(CTX, T, rnd.participants, survivors, {6}, answers, rnd.digests, public)
    answers = _answers(rnd, survivors)
    for holder in (0, 1, 2):
        del answers[holder]["self"][4]  # only 3 of the 6 answers carry a share of client 4's seed
    with pytest.raises(SecureAggregationError, match="round 2: self-mask seed of client 4: 3 shares, 4 needed"):
        recovery.recover(CTX, T, rnd.participants, survivors, {6}, answers, rnd.digests, public)
    answers = _answers(rnd, survivors)
    answers[6] = answers[5]
    with pytest.raises(SecureAggregationError, match="unmask answers from clients 6, who are not survivors"):
        recovery.recover(CTX, T, rnd.participants, survivors, {6}, answers, rnd.digests, public)


def test_a_dealer_whose_shares_do_not_rebuild_its_public_key_is_named():
    rnd = simulate.setup(CTX, list(range(N)), T)
    survivors = set(range(N)) - {6}
    public = {i: rnd.public(i)[1] for i in rnd.participants}
    public[6] = agreement.public_key(agreement.new_private_key())  # client 6 published another key than it shared
    with pytest.raises(SecureAggregationError, match="rebuilt mask key of dropped client 6 does not match its public key"):
        recovery.recover(CTX, T, rnd.participants, survivors, {6}, _answers(rnd, survivors), rnd.digests, public)


def test_tampered_sealed_shares_are_named():
    rnd = simulate.setup(CTX, [0, 1, 2], 2)
    blob = rnd.sealed[(0, 2)]
    with pytest.raises(SecureAggregationError, match="the shares from client 0 to client 2 fail authentication"):
        simulate.deliver(rnd, 0, 2, blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(SecureAggregationError, match="the shares from client 1 to client 2 fail authentication"):
        simulate.deliver(rnd, 1, 2, blob)  # 0's message passed off as 1's


def test_input_segments_must_match():
    with pytest.raises(SecureAggregationError, match="segment 'a' is uint16"):
        masking.mask({"a": np.zeros(3, np.uint16)}, {"a": 5}, 0, bytes(32), {})
    with pytest.raises(SecureAggregationError, match="do not match the expected"):
        masking.mask({"a": np.zeros(3, np.uint8)}, {"b": 5}, 0, bytes(32), {})
