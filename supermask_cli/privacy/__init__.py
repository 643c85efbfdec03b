"""Differential privacy: DP-SGD on each client's examples, client-level noise on the aggregate,
and the ε ledger recorded in every file (README "Privacy")."""
