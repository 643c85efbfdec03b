"""Secure aggregation (Bonawitz et al. 2017, "Practical Secure Aggregation"): the aggregator learns
the sum of the survivors' integer-encoded inputs and nothing about any one of them.

One round, for participants U (client ids), threshold t:

1. ``keys``: each client i makes two fresh X25519 key pairs, (c_i) for its channels and (s_i)
   for its pairwise masks, and publishes both public keys (:mod:`.agreement`).
2. ``shares``: i draws a 32-byte self-mask seed b_i, splits b_i and the private key of s_i into
   t-of-n Shamir shares (:mod:`.sharing`) and sends peer j its two shares sealed with
   ChaCha20-Poly1305 under a key derived from (c_i, c_j), with the SHA-256 digest of every share
   public so that the server can name a wrong one.
3. masked input: y_i = x_i + PRG(b_i) + Σ_{j>i} PRG(s_ij) − Σ_{j<i} PRG(s_ij) mod 2^k, with
   s_ij = HKDF(X25519(s_i, s_j)) and PRG = ChaCha20 (:mod:`.prg`, :mod:`.masking`); x_i is
   integer-encoded with a k that the sum cannot wrap (:mod:`.encoding`).
4. unmask: the server lists the survivors (those whose masked input it holds); each survivor
   reveals, per peer, exactly one kind of share: b_j's if j survived, s_j's if j dropped, and
   refuses a request that asks for both kinds of one peer (:mod:`.recovery`). From t answers the
   server rebuilds the survivors' b and the dropped clients' s keys and removes every mask.

Primitives come from ``cryptography`` (X25519, HKDF-SHA256, ChaCha20, ChaCha20-Poly1305) and
pycryptodome (Shamir over GF(2^128)); nothing here implements a cipher.
"""
