"""A CallGuard that records what a provider client told it (for client tests)."""

from __future__ import annotations


class RecordingGuard:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool | None, float | None]] = []

    def before_call(self, provider: str) -> None:
        self.calls.append(("before", provider, None, None))

    def after_call(self, provider: str, ok: bool, retry_after: float | None = None) -> None:
        self.calls.append(("after", provider, ok, retry_after))
