"""Secure aggregation's cost per round at MiniLM size: upload bits per weight and CPU seconds of
one client (key agreement, Shamir, sealing, PRG masking, packing) and of the server (share checks
and Shamir recovery, pairwise seeds of the dropped, PRG unmasking), full peer graph (Bonawitz).

One process plays every client (``supermask_cli.secagg.simulate``): the keys and shares of all n
participants are real; the client figures are client 0's; the server's unmask runs over the real
recovered seeds of |S| survivors and |D| = round(dropout · n) dropped clients on N words. The
sum is checked exactly on a small vector first. Prints one JSON object per (n, dropout).

    python benchmarks/secagg_cost.py --participants 4,10,100 --dropout 0,0.2 [--weights 10760000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from supermask_cli.secagg import agreement, encoding, masking, packing, recovery, sharing, simulate
from supermask_cli.secagg.agreement import Context

MINILM_WEIGHTS = 10_760_000  # the 37 target modules of all-MiniLM-L6-v2 (benchmarks/mask_coding.py)
PLAINTEXT_BITS = 0.03  # today's coded upload, bits per weight (README)


def timed(fn, *args, **kwargs):
    start = time.process_time()
    out = fn(*args, **kwargs)
    return out, time.process_time() - start


def one(n: int, dropout: float, weights: int, max_weight: int) -> dict:
    ctx, t = Context("bench", 1), sharing.default_threshold(n)
    bits = encoding.sum_bits(n * max_weight, 1)
    dropped = set(range(n - round(dropout * n), n))
    # the exact sum, end to end, on a small vector
    rng = np.random.default_rng(0)
    small = {i: {"m": encoding.encode_unsigned(rng.integers(0, 2, 257), max_weight, bits, what="m")} for i in range(n)}
    got = simulate.run(ctx, small, {"m": bits}, t, dropped=dropped)["m"]
    want = sum(small[i]["m"].astype(np.int64) for i in range(n) if i not in dropped)
    assert np.array_equal(encoding.decode_unsigned(got), want)

    rnd, setup_s = timed(simulate.setup, ctx, list(range(n)), t)
    me = rnd.clients[0]
    pubs = {j: rnd.public(j) for j in range(n)}
    _, keygen_s = timed(lambda: [agreement.new_private_key() for _ in range(2)])
    seeds, agree_s = timed(lambda: {j: agreement.pair_seed(me.mask_private, pubs[j][1], ctx, 0, j) for j in range(1, n)})
    _, chan_s = timed(lambda: [agreement.channel_key(me.channel_private, pubs[j][0], ctx, 0, j) for j in range(n)])
    _, split_s = timed(lambda: (sharing.split(me.self_seed, t, n), sharing.split(me.mask_private, t, n)))
    key0 = agreement.channel_key(me.channel_private, pubs[1][0], ctx, 0, 1)
    _, seal_s = timed(lambda: [agreement.seal(key0, bytes(64), ctx, 0, j) for j in range(n)])
    x = {"mask": encoding.encode_unsigned(rng.integers(0, 2, weights).astype(np.uint8), max_weight, bits, what="m")}
    y, mask_s = timed(masking.mask, x, {"mask": bits}, 0, me.self_seed, seeds)
    packed, pack_s = timed(packing.pack, y["mask"], bits)

    survivors = set(range(n)) - dropped
    answers = {i: recovery.answer(ctx, i, t, rnd.clients[i].holdings, survivors, dropped)[0] for i in survivors}
    mask_public = {i: pubs[i][1] for i in range(n)}
    (self_seeds, pairs), recover_s = timed(recovery.recover, ctx, t, list(range(n)), survivors, dropped, answers, rnd.digests, mask_public)
    _, unpack_s = timed(packing.unpack, packed, weights, bits)
    total = y["mask"]
    _, add_s = timed(lambda: [encoding.add_mod(total, total, bits) for _ in range(len(survivors))])
    _, unmask_s = timed(masking.unmask, {"mask": total}, {"mask": bits}, self_seeds, pairs)
    return {
        "participants": n, "threshold": t, "dropped": len(dropped), "weights": weights, "max_weight": max_weight,
        "k_bits": bits, "upload_bits_per_weight": packed.nbytes * 8 / weights, "plaintext_bits_per_weight": PLAINTEXT_BITS,
        "client_cpu_s": {"keygen": keygen_s, "pair_seeds": agree_s, "channel_keys": chan_s, "shamir_split": split_s,
                         "seal": seal_s, "mask_prg": mask_s, "pack": pack_s},
        "server_cpu_s": {"recover_shamir_and_pair_seeds": recover_s, "unpack_one": unpack_s,
                         "add_survivors": add_s, "unmask_prg": unmask_s},
        "setup_all_clients_s": setup_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", default="4,10")
    parser.add_argument("--dropout", default="0,0.2")
    parser.add_argument("--weights", type=int, default=MINILM_WEIGHTS)
    parser.add_argument("--max-weight", type=int, default=1, help="largest client weight (1 = uniform weighting)")
    args = parser.parse_args()
    for n in (int(v) for v in args.participants.split(",")):
        for d in (float(v) for v in args.dropout.split(",")):
            print(json.dumps(one(n, d, args.weights, args.max_weight)), flush=True)


if __name__ == "__main__":
    main()
