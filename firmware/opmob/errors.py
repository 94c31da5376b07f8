"""Typed errors for bad input from the network or from files.

Every decoder in the core raises only subclasses of WireError, so a driver can catch one type,
count the drop under ``err.counter`` and carry on. Anything else escaping a decoder is a bug.
"""


class WireError(ValueError):
    counter = "malformed"


class Truncated(WireError):
    counter = "truncated"


class Oversized(WireError):
    counter = "oversized"


class BadVersion(WireError):
    counter = "bad_version"


class BadValue(WireError):
    """A field holds a value the format does not allow (unknown type, out of range, bad padding)."""

    counter = "bad_value"


class AuthFailed(WireError):
    counter = "auth_failed"


class Replayed(WireError):
    counter = "replayed"


class UnknownStream(WireError):
    """No context for this SSRC or session: not registered, or keys not yet agreed."""

    counter = "unknown_stream"
