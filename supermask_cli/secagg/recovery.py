"""The unmasking round: what a survivor reveals, and how the server rebuilds the seeds from it.

Client side (:func:`answer`): given the server's survivor list, reveal for every peer exactly one
kind of share — the self-mask seed's if the peer survived, the mask key's if it dropped — and
refuse, in one line, a request that would give the server both kinds of one peer, now or together
with what this client revealed before in the same round (an aggregator that lists a live client
as dropped, or asks twice with different lists, would otherwise learn that client's input).

Server side (:func:`recover`): with at least t answers, check every revealed share against the
digest its owner published, rebuild the survivors' self-mask seeds and the dropped clients'
private mask keys (each checked against its published public key), and derive the pairwise
seeds that :func:`.masking.unmask` removes.
"""

from __future__ import annotations

from ..errors import SecureAggregationError
from .agreement import Context, pair_seed, public_key
from .sharing import combine, share_digest


def _ids(clients) -> str:
    return ", ".join(str(c) for c in sorted(clients)) or "none"


def answer(ctx: Context, me: int, t: int, holdings: dict[int, dict[str, bytes]], survivors: set[int],
           dropped: set[int], revealed: dict[int, str] | None = None) -> tuple[dict[str, dict[int, bytes]], dict[int, str]]:
    """This client's unmask shares: ``{"self": {survivor: share}, "pair": {dropped: share}}`` and the
    updated record of what it has revealed (owner -> kind), to keep for any later request.

    ``holdings``: owner -> {"self": share of b_owner, "pair": share of s_owner's private key}, one
    entry per participant whose shares this client holds (itself included). Peers in neither
    list get nothing revealed."""
    where = f"round {ctx.round}: client {me} refuses to unmask"
    both = survivors & dropped
    if both:
        raise SecureAggregationError(f"{where}: clients {_ids(both)} are listed both as survivors and as dropped")
    if me in dropped or me not in survivors:
        raise SecureAggregationError(f"{where}: it is listed as dropped but is alive (its masked input was sent)")
    if len(survivors) < t:
        raise SecureAggregationError(f"{where}: {len(survivors)} survivors are fewer than the threshold {t}")
    # a listed client whose shares this one does not hold (its keys came late) gets nothing revealed
    wanted = {owner: ("self" if owner in survivors else "pair") for owner in sorted((survivors | dropped) & set(holdings))}
    before = dict(revealed or {})
    flipped = {owner for owner, part in wanted.items() if before.get(owner, part) != part}
    if flipped:
        raise SecureAggregationError(f"{where}: it already revealed the other kind of share of clients {_ids(flipped)} "
                                     "(both kinds would unmask their inputs)")
    out: dict[str, dict[int, bytes]] = {"self": {}, "pair": {}}
    for owner, part in wanted.items():
        out[part][owner] = holdings[owner][part]
    return out, {**before, **wanted}


def recover(ctx: Context, t: int, participants: list[int], survivors: set[int], dropped: set[int],
            answers: dict[int, dict[str, dict[int, bytes]]], digests: dict[tuple[str, int, int], str],
            mask_public: dict[int, bytes]) -> tuple[dict[int, bytes], dict[tuple[int, int], bytes]]:
    """The survivors' self-mask seeds and the (survivor, dropped) pairwise seeds.

    ``participants``: the round's participants (sorted; share index = position + 1);
    ``dropped``: the non-survivors whose mask keys are needed (some survivor masked with them);
    ``answers``: holder -> its :func:`answer`; ``digests``: (kind, owner, holder) -> the owner's
    published share digest; ``mask_public``: owner -> its published mask public key."""
    if survivors & dropped:
        raise SecureAggregationError(f"round {ctx.round}: clients {_ids(survivors & dropped)} are both survivors and dropped")
    if len(survivors) < t:
        raise SecureAggregationError(
            f"round {ctx.round}: {len(survivors)} of {len(participants)} participants survived, fewer than the threshold {t}; "
            f"cannot unmask; missing clients {_ids(set(participants) - survivors)}")
    strangers = set(answers) - survivors
    if strangers:
        raise SecureAggregationError(f"round {ctx.round}: unmask answers from clients {_ids(strangers)}, who are not survivors")
    if len(answers) < t:
        raise SecureAggregationError(
            f"round {ctx.round}: {len(answers)} unmask answers, the threshold is {t}; missing answers from clients {_ids(survivors - set(answers))}")
    index = {client: k + 1 for k, client in enumerate(participants)}
    shares: dict[tuple[str, int], dict[int, bytes]] = {}
    for holder in sorted(answers):
        for part in ("self", "pair"):
            owners = answers[holder].get(part, {})
            expected = survivors if part == "self" else dropped
            if set(owners) - expected:
                raise SecureAggregationError(
                    f"round {ctx.round}: client {holder}'s unmask answer has {part} shares of clients {_ids(set(owners) - expected)}, "
                    "which were not asked for")
            for owner, share in owners.items():
                if share_digest(ctx, part, owner, holder, share) != digests.get((part, owner, holder)):
                    raise SecureAggregationError(
                        f"round {ctx.round}: client {holder}'s {part} share of client {owner} does not match the digest client {owner} published")
                shares.setdefault((part, owner), {})[index[holder]] = share
    self_seeds = {s: combine(shares.get(("self", s), {}), t, what=f"round {ctx.round}: self-mask seed of client {s}") for s in sorted(survivors)}
    pairs: dict[tuple[int, int], bytes] = {}
    for d in sorted(dropped):
        key = combine(shares.get(("pair", d), {}), t, what=f"round {ctx.round}: mask key of dropped client {d}")
        if public_key(key) != mask_public[d]:
            raise SecureAggregationError(f"round {ctx.round}: the rebuilt mask key of dropped client {d} does not match its public key")
        for s in sorted(survivors):
            pairs[(s, d)] = pair_seed(key, mask_public[s], ctx, d, s)
    return self_seeds, pairs
