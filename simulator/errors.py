"""User-facing error types: one per kind of mistake; the CLI turns each into one line and exit 2."""


class EntrospecError(Exception):
    """Base class of every error caused by bad input rather than a bug."""


class TraceError(EntrospecError):
    """A trace file is missing, unreadable, of another schema version, or has bad values."""


class PolicyError(EntrospecError):
    """Unknown policy, unknown or malformed policy parameter."""


class LatencyError(EntrospecError):
    """Malformed latency spec, unknown hardware or pair, or a profile of another schema."""


class GridError(EntrospecError):
    """Malformed sweep grid."""
