"""The FastAPI application: API, web UI, SSE, and (for ``local``) the worker processes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from conveyor import __version__
from conveyor.api import common
from conveyor.api.limits import BodyLimitMiddleware
from conveyor.config import Settings, get_settings
from conveyor.runtime import load_pipelines, prepare, start_background, storage_for

log = logging.getLogger("conveyor.api")


def create_app(settings: Settings | None = None, *, start_workers: bool = False) -> FastAPI:
    settings = settings or get_settings()
    load_pipelines(settings.plugins)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        prepare(settings)
        background = start_background(settings, workers=start_workers)
        app.state.executor = background
        try:
            yield
        finally:
            if background is not None:
                background.stop()

    app = FastAPI(title="Conveyor", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.storage = storage_for(settings)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)

    from conveyor.pipelines.photos.api import router as photos_router
    from conveyor.pipelines.photos.pages import router as photos_pages_router
    from conveyor.pipelines.records.api import router as records_router
    from conveyor.web.pages import router as pages_router
    from conveyor.web.pages import static_files

    app.include_router(common.router)
    app.include_router(records_router)
    app.include_router(photos_router)  # seed 002's /photos …
    app.include_router(photos_router, prefix="/api/v1")  # … and /api/v1/photos
    app.include_router(photos_pages_router)
    app.include_router(pages_router)
    app.mount("/static", static_files(), name="static")
    return app
