"""Retry delays: exponential backoff with full jitter, capped."""

from __future__ import annotations

import random


def backoff_delay(
    attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 1).

    Full jitter (AWS architecture blog): uniform in ``[0, min(cap, base * 2**(attempt-1))]``,
    so that many workers failing at once do not retry in lockstep.
    """
    ceiling = min(cap_s, base_s * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(0.0, ceiling)
