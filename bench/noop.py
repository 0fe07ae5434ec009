"""A no-op step in a ``bench`` pipeline, and the runner factory worker processes use.

Importable from spawned worker processes (``bench.noop.build_noop_runner`` is pickled by
reference), so that the step registers there too.
"""

from __future__ import annotations

from typing import Any

from conveyor.config import Settings
from conveyor.engine.runner import Runner
from conveyor.engine.steps import Step, StepContext, registry

PIPELINE = "bench"


class NoopStep(Step):
    pipeline = PIPELINE
    name = "noop"

    def run(self, ctx: StepContext) -> Any:
        return None


registry.register(NoopStep())


def build_noop_runner(settings: Settings) -> Runner:
    """Like ``conveyor.runtime.build_runner`` but with the bench pipeline registered and
    no INFO logging (a log line per job would be part of what we measure)."""
    from conveyor.runtime import build_guard
    from conveyor.storage import build_storage

    return Runner(settings, registry, build_storage(settings.resolved_storage_url),
                  build_guard(settings))
