"""The application factory and its lifespan, the only owner of the engine."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from stockroom import __version__
from stockroom.auth.deps import security_schemes
from stockroom.auth.router import current_key_router, stream_tokens_router
from stockroom.auth.router import router as auth_router
from stockroom.background import event_services, purge_periodically, repeat
from stockroom.console import CONSOLE_PATH, console_app
from stockroom.console import router as console_router
from stockroom.edge import CorsMiddleware, HeadMiddleware, UnreadBodyMiddleware, api_methods
from stockroom.events.router import router as events_router
from stockroom.files.router import router as files_router
from stockroom.idempotency.service import purge_expired
from stockroom.items.event_types import EVENT_TYPES
from stockroom.items.router import router as items_router
from stockroom.ledger.router import router as ledger_router
from stockroom.middleware import (
    BodyLimitMiddleware,
    ConsistencyMiddleware,
    RateLimitHeadersMiddleware,
    RequestContextMiddleware,
)
from stockroom.observability import AccessLog, Metrics, configure_logging, watch_event_loop
from stockroom.openapi import install_openapi
from stockroom.problems import install_error_handlers
from stockroom.settings import Settings, load_settings
from stockroom.stores import open_resources
from stockroom.system import DOCS_ASSETS_PATH, docs_assets
from stockroom.system import router as system_router
from stockroom.webhooks.router import router as webhooks_router

__all__ = ["create_app"]

log = structlog.get_logger("stockroom.app")
_FOLD_SECONDS = 5.0

DESCRIPTION = """\
An async inventory service: items and their stock.
Errors are `application/problem+json`; lists use `{"data", "next_cursor"}`.
"""


def _add_routes(app: FastAPI, router: APIRouter) -> None:
    """The router's routes as the app's own: ``include_router`` without its cost.

    Since FastAPI 0.137 an included router stays a node of the app's routes that every
    request walks (the routers' versions, each route's match through its include context):
    a cost every request pays (docs/async.md has the measurement; ``bench/``'s
    fastapi-ceiling has its routes on the app too). Ours need nothing an include
    adds: each has its prefix, tags, responses and scope checks in its routes already, and
    no include-time options. (Not supported so: ``app.dependency_overrides``, which reaches
    only routes the app itself made or included.)"""
    if any(not isinstance(route, APIRoute) for route in router.routes):
        raise TypeError(f"{router!r}: only plain routes can be added flat")
    app.router.routes.extend(router.routes)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Nothing connects until the lifespan starts."""
    settings = settings or load_settings()
    configure_logging(settings.log_level_number)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics: Metrics = app.state.metrics
        async with open_resources(settings, metrics=metrics) as resources:
            app.state.resources = resources  # what resources_of(request) reads
            if not settings.auth:
                log.warning(
                    "AUTHENTICATION IS OFF (STOCKROOM_AUTH=off): every endpoint is open to "
                    "anyone who can reach this port. Use this for local play only."
                )
            database = resources.stores.database
            purger = asyncio.create_task(
                purge_periodically(
                    "idempotency keys",
                    resources.sessions,
                    purge_expired,
                    settings.idempotency_purge_seconds,
                ),
                name="idempotency-purge",
            )
            # The catalogue's totals (PostgreSQL) folded into one row every few seconds, so
            # that the summary and counts read a handful of rows (items/_totals.py).
            folder = asyncio.create_task(
                repeat("item totals", resources.stores.items.fold_totals, _FOLD_SECONDS),
                name="totals-fold",
            )

            def sample_database() -> None:
                metrics.sample_pool(database.pool_status())
                metrics.sample_replicas(database.replica_status(), database.read_routes())

            watcher = asyncio.create_task(
                watch_event_loop(metrics, sample_database, settings.event_loop_probe_seconds),
                name="event-loop-watch",
            )
            log.info("started", database=settings.backend, version=__version__)
            # Everything made so far (the app, its routes and schemas, the modules) lives as
            # long as the process: out of the collector's sight, a full collection no longer
            # walks it, and the event loop no longer stalls for one (docs/async.md).
            gc.collect()
            gc.freeze()
            try:
                async with event_services(
                    resources, serving=True, dispatcher=settings.webhook_dispatcher
                ):
                    yield
            finally:
                for task in (purger, folder, watcher):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                metrics.forget_this_process()
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
    app.state.metrics = Metrics()
    app.state.event_types = EVENT_TYPES
    install_error_handlers(app)
    # Routes are matched in order, one regex each: the most used first. (/items/import and
    # /items/export are not /items/{item_id}: its convertor excludes them.)
    for router in (
        items_router,
        ledger_router,
        files_router,
        system_router,
        auth_router,
        stream_tokens_router,
        webhooks_router,
        events_router,
        current_key_router,
        console_router,
    ):
        _add_routes(app, router)
    app.mount(DOCS_ASSETS_PATH, docs_assets(), name="docs-assets")
    app.mount(CONSOLE_PATH, console_app(), name="console")
    # Innermost: HEAD runs as the GET, whose body it drops.
    app.add_middleware(HeadMiddleware)
    install_openapi(app, security_schemes=security_schemes())
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        per_path={"/items/import": settings.import_max_bytes},
    )
    if settings.rate_limit:
        app.add_middleware(RateLimitHeadersMiddleware)
    # Read-your-writes across replicas (without them: only a malformed token's 400).
    app.add_middleware(ConsistencyMiddleware, replicas=bool(settings.database_replica_urls))
    # Added last = outermost: the request id is set before anything else runs, and every
    # request is counted and logged with the status its client got.
    app.add_middleware(
        RequestContextMiddleware,
        metrics=app.state.metrics,
        access_log=AccessLog(settings.log_level_number),
    )
    # Outside the request context: every answer, its last-resort 500 included, carries the
    # CORS headers, and a preflight is answered before any key is asked for.
    if settings.cors_origin_list:
        app.add_middleware(
            CorsMiddleware, origins=settings.cors_origin_list, methods=api_methods(app)
        )
    # Outermost: whatever answered early, the rest of an unread request body is read first.
    app.add_middleware(UnreadBodyMiddleware)
    return app
