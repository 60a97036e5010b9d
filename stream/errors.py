"""One root exception for the project, and the error kinds callers branch on.

Bad input never kills a worker: the stream turns a :class:`BadRecord` into a
dead-letter record with its ``reason``; the CLI prints the message on one line
and exits non-zero.
"""


class ClusterstreamError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(ClusterstreamError):
    """Settings or arguments that cannot work (wrong type, out of range, missing)."""


class BadRecord(ClusterstreamError):
    """One input record that does not match its schema.

    ``reason`` is a short, stable, human-readable text (it ends up in the
    dead-letter topic), e.g. ``"ts: must be an integer"``.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class BrokerUnavailable(ClusterstreamError):
    """The Kafka broker cannot be reached or started."""
