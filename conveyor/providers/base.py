"""What every external provider shares: a guard that rate-limits and trips breakers.

The engine implements :class:`CallGuard` on top of the shared ``rate_buckets`` table, so
every worker process (and, in distributed mode, every machine) draws from one bucket per
provider. Providers only see this protocol; they never import the engine.
"""

from __future__ import annotations

from typing import Protocol


class CallGuard(Protocol):
    def before_call(self, provider: str) -> None:
        """Wait for a rate-limit token; raise ``ProviderUnavailable`` if the breaker is open
        or the wait would be too long."""

    def after_call(self, provider: str, ok: bool, retry_after: float | None = None) -> None:
        """Report the outcome: failures (429, 5xx, timeouts) count towards the breaker and a
        ``retry_after`` pauses the whole provider for every worker."""


class NoGuard:
    """A guard that never waits: for one-off scripts and unit tests."""

    def before_call(self, provider: str) -> None:
        return None

    def after_call(self, provider: str, ok: bool, retry_after: float | None = None) -> None:
        return None
