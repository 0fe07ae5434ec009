"""The inline executor: run jobs in the calling process until none is due."""

from __future__ import annotations

import time

from conveyor.engine.runner import Runner


def run_until_idle(runner: Runner, *, max_jobs: int | None = None,
                   wait_for_delayed_s: float = 0.0) -> int:
    """Run due jobs until the queue is empty; returns how many ran.

    ``wait_for_delayed_s`` keeps polling that long for jobs scheduled in the near future
    (retries with backoff) before giving up.
    """
    ran = 0
    idle_since: float | None = None
    while max_jobs is None or ran < max_jobs:
        if runner.run_one():
            ran += 1
            idle_since = None
            continue
        now = time.monotonic()
        idle_since = idle_since or now
        if now - idle_since >= wait_for_delayed_s:
            break
        time.sleep(min(0.05, wait_for_delayed_s))
    return ran
