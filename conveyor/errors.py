"""Error types shared by every layer.

A step raises :class:`TransientError` for anything worth retrying (timeouts, 429, 5xx,
connection resets) and :class:`PermanentError` for anything that will fail the same way
again (corrupt input, schema violation). Each carries a short machine-readable ``code``
and a human-readable message; neither may ever contain a secret.
"""

from __future__ import annotations


class ConveyorError(Exception):
    """Base class: ``code`` is stable and machine-readable, ``message`` is for people."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class TransientError(ConveyorError):
    """Worth retrying later; ``retry_after`` (seconds) overrides the backoff when known."""

    code = "transient"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class PermanentError(ConveyorError):
    """Will fail the same way again: the job ends ``failed`` at once."""

    code = "permanent"


class MediaError(PermanentError):
    """A file that cannot be decoded safely (corrupt, hostile, too big, too slow)."""

    code = "media_invalid"


class ProviderUnavailable(TransientError):
    """A provider's circuit breaker is open or its rate limit is exhausted for now."""

    code = "provider_unavailable"


class NotConfigured(ConveyorError):
    """An optional provider (an LLM, a catalogue token) has no configuration."""

    code = "not_configured"
