"""The composition root: turns Settings into a storage, a call guard, a runner and an app.

Everything that chooses an implementation by configuration happens here, once, so the
layers below only ever see the small interfaces they need.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from typing import Protocol

from conveyor.config import Settings, get_settings
from conveyor.engine.ratelimit import DbCallGuard, Rate
from conveyor.engine.runner import Runner
from conveyor.engine.steps import StepRegistry, registry
from conveyor.providers.catalogs.discogs import discogs_rate_per_min
from conveyor.providers.vision.factory import GUARD_KEYS as VISION_GUARD_KEYS
from conveyor.storage import Storage, build_storage


def load_pipelines(plugins: Iterable[str] = ()) -> StepRegistry:
    """Import every pipeline (and the configured plugins) so their steps register."""
    import conveyor.pipelines.photos.steps
    import conveyor.pipelines.records.steps  # noqa: F401

    for module in plugins:
        importlib.import_module(module)
    return registry


def provider_rates(settings: Settings) -> dict[str, Rate]:
    return {
        "discogs": Rate(float(discogs_rate_per_min(bool(
            settings.discogs_token and settings.discogs_token.get_secret_value()))), 1.0),
        "llm": Rate(settings.llm_rate_per_min, 2.0),
        # photo-analysis services (conveyor/providers/vision; the openai one shares "llm")
        **{key: Rate(settings.ai_rate_per_min, 2.0)
           for key in VISION_GUARD_KEYS.values() if key != "llm"},
    }


def build_guard(settings: Settings) -> DbCallGuard:
    return DbCallGuard(settings.resolved_database_url, provider_rates(settings),
                       breaker_failures=settings.breaker_failures,
                       breaker_open_s=settings.breaker_open_s)


def build_runner(settings: Settings) -> Runner:
    """Used in-process (inline) and as the entry of each local worker process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return Runner(settings, load_pipelines(settings.plugins),
                  build_storage(settings.resolved_storage_url),
                  build_guard(settings))


def prepare(settings: Settings | None = None) -> Settings:
    """Create the home folder, bring the database schema up to date, and (with the celery
    executor) publish every job this process enqueues to the broker."""
    from conveyor.db.migrate import upgrade  # Alembic is slow to import: only here

    settings = settings or get_settings()
    check_executor(settings)
    settings.home_dir.mkdir(parents=True, exist_ok=True)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    if settings.executor == "celery":
        from conveyor.engine.executors.celery import install_publisher

        install_publisher(settings)
    return settings


EXECUTORS = ("local", "inline", "celery")


def check_executor(settings: Settings) -> None:
    if settings.executor not in EXECUTORS:
        raise ValueError(f"CONVEYOR_EXECUTOR must be one of {', '.join(EXECUTORS)}, "
                         f"not {settings.executor!r}")
    if settings.executor == "celery" and not settings.broker_url:
        raise ValueError("CONVEYOR_EXECUTOR=celery needs CONVEYOR_BROKER_URL, e.g. "
                         "redis://127.0.0.1:6379/0 or amqp://guest:guest@127.0.0.1:5672//")


class Background(Protocol):
    def stop(self) -> None: ...


def start_background(settings: Settings, *, workers: bool) -> Background | None:
    """What runs beside the API: local worker processes, or (celery) the dispatcher loop
    that republishes lost messages and reaps expired leases. Inline runs nothing."""
    if settings.executor == "celery":
        from conveyor.engine.executors.celery import Dispatcher

        dispatcher = Dispatcher(settings)
        dispatcher.start()
        return dispatcher
    if settings.executor == "local" and workers:
        from conveyor.engine.executors.local import LocalExecutor

        executor = LocalExecutor(settings, build_runner)
        executor.start()
        return executor
    return None


def storage_for(settings: Settings) -> Storage:
    return build_storage(settings.resolved_storage_url)
