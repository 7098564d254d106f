"""Service endpoints: liveness, readiness, metrics and the offline API docs."""

from __future__ import annotations

import asyncio
from importlib import resources as package_files

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema
from sqlalchemy import text
from starlette.staticfiles import StaticFiles

from stockroom.errors import UnavailableError
from stockroom.observability import METRICS_CONTENT_TYPE
from stockroom.problems import problem_responses
from stockroom.resources import resources_of

__all__ = ["DOCS_ASSETS_PATH", "docs_assets", "router"]

# /readyz answers within this many seconds even when the database does not.
READINESS_TIMEOUT = 1.5
DOCS_ASSETS_PATH = "/docs-assets"

router = APIRouter(tags=["service"], responses=problem_responses(500))


class Pong(BaseModel):
    ping: str = "pong"


class Health(BaseModel):
    status: str = "ok"


class ReplicaReadiness(BaseModel):
    name: str = Field(description="host:port/database of the replica.")
    serving: bool = Field(description="Whether it takes reads now.")
    lag_seconds: float | None = Field(description="How far behind the primary it was.")
    reason: str = Field(description="Why it takes no reads; empty when it does.")


def _absent(value: object) -> bool:
    return value is None


class Readiness(BaseModel):
    status: str = "ok"
    database: str = "ok"
    # Present only where replicas are configured; they never make the service unready.
    replicas: list[ReplicaReadiness] | SkipJsonSchema[None] = Field(
        None,
        exclude_if=_absent,
        description="Each read replica (only where replicas are configured); a replica that "
        "takes no reads leaves the service ready: its reads go to the primary.",
    )


@router.get("/ping", operation_id="ping")
async def ping() -> Pong:
    return Pong()


@router.get("/healthz", operation_id="getHealth")
async def healthz() -> Health:
    """The process is up. Makes no database call."""
    return Health()


@router.get("/readyz", responses=problem_responses(503), operation_id="getReadiness")
async def readyz(request: Request) -> Readiness:
    """The database answers a trivial query within 1.5 s (the primary: replicas are
    reported, and never make the service unready)."""
    resources = resources_of(request)
    try:
        async with asyncio.timeout(READINESS_TIMEOUT), resources.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:
        raise UnavailableError("The database is not answering.") from exc
    if not resources.settings.database_replica_urls:
        return Readiness()
    replicas = [
        ReplicaReadiness(name=r.name, serving=r.serving, lag_seconds=r.lag_seconds, reason=r.reason)
        for r in resources.stores.database.replica_status()
    ]
    return Readiness(replicas=replicas)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format (see docs/operations.md for every metric).",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
    operation_id="getMetrics",
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this instance (all its workers). Open: no key needed."""
    resources = resources_of(request)
    collected = resources.metrics
    if collected is None:  # an app always has them (create_app); a test app may not
        raise UnavailableError("This process keeps no metrics.")
    database = resources.stores.database
    collected.sample_pool(database.pool_status())
    collected.sample_replicas(database.replica_status(), database.read_routes())
    # With several workers this reads their files: keep that off the event loop.
    body = await asyncio.to_thread(collected.render)
    return Response(body, media_type=METRICS_CONTENT_TYPE)


def docs_assets() -> StaticFiles:
    """Swagger UI and ReDoc files shipped in a package, so /docs works with no internet."""
    return StaticFiles(directory=str(package_files.files("fastapi_offline") / "static"))


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=str(request.app.openapi_url),
        title="Stockroom API",
        swagger_js_url=f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS_PATH}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=str(request.app.openapi_url),
        title="Stockroom API",
        redoc_js_url=f"{DOCS_ASSETS_PATH}/redoc.standalone.js",
        redoc_favicon_url=f"{DOCS_ASSETS_PATH}/favicon.png",
        with_google_fonts=False,
    )
