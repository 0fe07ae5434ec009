"""The composition root: turns Settings into a storage, a call guard, a runner and an app.

Everything that chooses an implementation by configuration happens here, once, so the
layers below only ever see the small interfaces they need.
"""

from __future__ import annotations

import logging

from conveyor.config import Settings, get_settings
from conveyor.engine.ratelimit import DbCallGuard, Rate
from conveyor.engine.runner import Runner
from conveyor.engine.steps import StepRegistry, registry
from conveyor.providers.catalogs.discogs import discogs_rate_per_min
from conveyor.storage import Storage, build_storage


def load_pipelines() -> StepRegistry:
    """Import every pipeline so that its steps register themselves."""
    import conveyor.pipelines.records.steps  # noqa: F401

    return registry


def provider_rates(settings: Settings) -> dict[str, Rate]:
    return {
        "discogs": Rate(float(discogs_rate_per_min(bool(
            settings.discogs_token and settings.discogs_token.get_secret_value()))), 1.0),
        "llm": Rate(settings.llm_rate_per_min, 2.0),
    }


def build_guard(settings: Settings) -> DbCallGuard:
    return DbCallGuard(settings.resolved_database_url, provider_rates(settings),
                       breaker_failures=settings.breaker_failures,
                       breaker_open_s=settings.breaker_open_s)


def build_runner(settings: Settings) -> Runner:
    """Used in-process (inline) and as the entry of each local worker process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return Runner(settings, load_pipelines(), build_storage(settings.resolved_storage_url),
                  build_guard(settings))


def prepare(settings: Settings | None = None) -> Settings:
    """Create the home folder and bring the database schema up to date."""
    from conveyor.db.migrate import upgrade  # Alembic is slow to import: only here

    settings = settings or get_settings()
    settings.home_dir.mkdir(parents=True, exist_ok=True)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    return settings


def storage_for(settings: Settings) -> Storage:
    return build_storage(settings.resolved_storage_url)
