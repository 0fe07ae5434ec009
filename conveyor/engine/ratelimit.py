"""Token buckets and circuit breakers per provider, shared through the ``rate_buckets`` table.

Every worker process draws from the same row, so "60 requests a minute" holds for the
whole installation, not per process. A 429 or 503 with ``Retry-After`` pauses the provider
for everyone; repeated failures open the breaker so an outage does not become a retry
storm: callers get :class:`ProviderUnavailable` at once and the job is retried later.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conveyor.db.models import RateBucket
from conveyor.db.session import transaction
from conveyor.errors import ProviderUnavailable


@dataclass(frozen=True)
class Rate:
    per_minute: float
    burst: float = 1.0

    @property
    def per_second(self) -> float:
        return self.per_minute / 60.0


class DbCallGuard:
    """:class:`conveyor.providers.base.CallGuard` backed by the database."""

    def __init__(
        self,
        db_url: str,
        rates: dict[str, Rate],
        *,
        breaker_failures: int = 5,
        breaker_open_s: float = 30.0,
        max_wait_s: float = 20.0,
    ) -> None:
        self.db_url = db_url
        self.rates = rates
        self.breaker_failures = breaker_failures
        self.breaker_open_s = breaker_open_s
        self.max_wait_s = max_wait_s

    def _bucket(self, session: Session, provider: str, now: float) -> RateBucket:
        rate = self.rates.get(provider, Rate(600.0, 10.0))
        row = session.scalars(
            select(RateBucket).where(RateBucket.name == provider).with_for_update()
        ).first()
        if row is None:
            try:
                with session.begin_nested():  # two processes may create it at once
                    row = RateBucket(name=provider, tokens=rate.burst, capacity=rate.burst,
                                     refill_per_s=rate.per_second, updated_at=now,
                                     paused_until=0.0, failures=0, open_until=0.0)
                    session.add(row)
            except IntegrityError:
                row = session.scalars(select(RateBucket).where(RateBucket.name == provider)
                                      .with_for_update()).one()
        elif row.capacity != rate.burst or row.refill_per_s != rate.per_second:
            row.capacity, row.refill_per_s = rate.burst, rate.per_second  # config changed
        return row

    def before_call(self, provider: str) -> None:
        deadline = time.monotonic() + self.max_wait_s
        while True:
            now = time.time()
            with transaction(self.db_url) as session:
                row = self._bucket(session, provider, now)
                if row.open_until > now:
                    raise ProviderUnavailable(
                        f"{provider} is failing; its circuit breaker is open for "
                        f"{row.open_until - now:.0f} s more",
                        code="circuit_open", retry_after=row.open_until - now,
                    )
                tokens = min(row.capacity, row.tokens + (now - row.updated_at) * row.refill_per_s)
                row.updated_at = now
                wait = max(0.0, row.paused_until - now)
                if wait == 0.0 and tokens >= 1.0:
                    row.tokens = tokens - 1.0
                    return
                row.tokens = tokens
                if wait == 0.0:
                    wait = (1.0 - tokens) / row.refill_per_s
            if time.monotonic() + wait > deadline:
                raise ProviderUnavailable(
                    f"{provider} rate limit: next request allowed in {wait:.1f} s",
                    code="rate_limited", retry_after=wait,
                )
            time.sleep(wait)

    def after_call(self, provider: str, ok: bool, retry_after: float | None = None) -> None:
        now = time.time()
        with transaction(self.db_url) as session:
            row = self._bucket(session, provider, now)
            if ok:
                row.failures = 0
                return
            row.failures += 1
            if retry_after:
                row.paused_until = max(row.paused_until, now + retry_after)
            if row.failures >= self.breaker_failures:
                row.open_until = now + self.breaker_open_s
                row.failures = 0
