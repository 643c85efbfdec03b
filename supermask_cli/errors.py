"""The project's own error: a user-facing problem reported as one line, exit status 2."""


class SupermaskError(Exception):
    """A user error (bad config, bad data, bad or mismatched file); never a bug."""


class CheckpointError(SupermaskError):
    """A checkpoint file is unreadable, malformed, or does not belong to this run."""


class SecureAggregationError(SupermaskError):
    """A secure-aggregation message is missing, malformed, tampered with, or not what the protocol expects."""
