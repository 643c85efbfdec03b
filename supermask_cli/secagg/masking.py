"""Masking a client's integer input and removing the masks from the survivors' sum.

An input is a dict of named segments (flat word arrays); ``bits`` gives each segment's k.
Client i sends y_i = x_i + PRG(b_i) + Σ_{j>i} PRG(s_ij) − Σ_{j<i} PRG(s_ij) (mod 2^k, per segment,
one PRG stream per segment name). Over the survivors S the pairwise masks of two survivors cancel;
what is left is Σ_{i∈S} PRG(b_i) and, for each dropped d and survivor i, ±PRG(s_id) — which the
server removes once it has rebuilt the b_i of the survivors and the s keys of the dropped.
"""

from __future__ import annotations

import numpy as np

from ..errors import SecureAggregationError
from .encoding import add_mod, sub_mod
from .prg import expand, word_dtype


def _check(x: dict[str, np.ndarray], bits: dict[str, int], what: str) -> None:
    if set(x) != set(bits):
        raise SecureAggregationError(f"{what}: segments {sorted(x)} do not match the expected {sorted(bits)}")
    for name, words in x.items():
        if words.dtype != word_dtype(bits[name]) or words.ndim != 1:
            raise SecureAggregationError(f"{what}: segment {name!r} is {words.dtype} {tuple(words.shape)}, "
                                         f"expected flat {word_dtype(bits[name])} words")


def _apply(y: dict[str, np.ndarray], bits: dict[str, int], seed: bytes, sign: int) -> None:
    for name, words in y.items():
        stream = expand(seed, words.size, bits[name], name)
        y[name] = add_mod(words, stream, bits[name]) if sign > 0 else sub_mod(words, stream, bits[name])


def mask(x: dict[str, np.ndarray], bits: dict[str, int], me: int, self_seed: bytes,
         pair_seeds: dict[int, bytes]) -> dict[str, np.ndarray]:
    """y_me from the encoded input ``x`` and the seeds of this round (``pair_seeds``: peer -> s_ij)."""
    _check(x, bits, f"client {me}'s input")
    if me in pair_seeds:
        raise SecureAggregationError(f"client {me} has no pairwise mask with itself")
    y = {name: words.copy() for name, words in x.items()}
    _apply(y, bits, self_seed, +1)
    for peer in sorted(pair_seeds):
        _apply(y, bits, pair_seeds[peer], +1 if peer > me else -1)
    return y


def add_inputs(uploads: dict[int, dict[str, np.ndarray]], bits: dict[str, int]) -> dict[str, np.ndarray]:
    """Σ y_i over the survivors' masked inputs, mod 2^k per segment."""
    total: dict[str, np.ndarray] = {}
    for client in sorted(uploads):
        _check(uploads[client], bits, f"client {client}'s masked input")
        for name, words in uploads[client].items():
            if name not in total:
                total[name] = words.copy()
            elif words.size != total[name].size:
                raise SecureAggregationError(f"client {client}'s masked input: segment {name!r} has {words.size} words, "
                                             f"the others {total[name].size}")
            else:
                total[name] = add_mod(total[name], words, bits[name])
    return total


def unmask(total: dict[str, np.ndarray], bits: dict[str, int], self_seeds: dict[int, bytes],
           dropped_pairs: dict[tuple[int, int], bytes]) -> dict[str, np.ndarray]:
    """Σ x_i over the survivors from Σ y_i, the survivors' self seeds b_i and, keyed
    (survivor i, dropped d), the pairwise seeds s_id of every survivor with every dropped client."""
    x = {name: words.copy() for name, words in total.items()}
    for survivor in sorted(self_seeds):
        _apply(x, bits, self_seeds[survivor], -1)
    for (survivor, dropped) in sorted(dropped_pairs):
        if survivor not in self_seeds:
            raise SecureAggregationError(f"client {survivor} is not a survivor, yet has a pairwise seed with dropped client {dropped}")
        # survivor added +PRG(s) if dropped > survivor, else subtracted it: undo that
        _apply(x, bits, dropped_pairs[(survivor, dropped)], -1 if dropped > survivor else +1)
    return x
