"""The application factory and its lifespan, the only owner of the engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from stockroom import __version__
from stockroom.db import create_engine, create_session_factory
from stockroom.errors import install_error_handlers
from stockroom.items.router import router as items_router
from stockroom.middleware import BodyLimitMiddleware, RequestContextMiddleware
from stockroom.observability import configure_logging
from stockroom.settings import Settings, load_settings
from stockroom.system import DOCS_ASSETS_PATH, docs_assets
from stockroom.system import router as system_router

__all__ = ["create_app"]

log = structlog.get_logger("stockroom.app")

DESCRIPTION = """\
An async inventory service: items and their stock.
Errors are `application/problem+json`; lists use `{"data", "next_cursor"}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Nothing connects until the lifespan starts."""
    settings = settings or load_settings()
    configure_logging(settings.log_level_number)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        app.state.engine = engine
        app.state.sessions = create_session_factory(engine)
        log.info("started", database=settings.database.get_backend_name(), version=__version__)
        try:
            yield
        finally:
            await engine.dispose()
            log.info("stopped")

    app = FastAPI(
        title="Stockroom",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(system_router)
    app.include_router(items_router)
    app.mount(DOCS_ASSETS_PATH, docs_assets(), name="docs-assets")
    # Added last = outermost: the request id is set before anything else runs.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware)
    return app
