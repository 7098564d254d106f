"""The ``stockroom`` command: serve | migrate | apikey."""

from __future__ import annotations

import asyncio
import atexit
import math
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Annotated, TypeVar

import typer
import uvicorn
from sqlalchemy.ext.asyncio import AsyncSession

from stockroom.auth import service as keys
from stockroom.db import create_engine, create_session_factory
from stockroom.errors import StockroomError
from stockroom.migrations import upgrade
from stockroom.observability import MULTIPROC_DIR_VARIABLE, configure_logging
from stockroom.settings import Settings, SettingsError, load_settings

__all__ = ["main"]

EXIT_FAILED = 1
EXIT_BAD_SETTING = 2
T = TypeVar("T")

cli = typer.Typer(
    name="stockroom",
    help="Stockroom, an async inventory service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _settings() -> Settings:
    settings = load_settings()
    configure_logging(settings.log_level_number)
    return settings


@cli.command()
def migrate() -> None:
    """Apply database migrations and exit."""
    settings = _settings()
    upgrade(settings.database_url)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
) -> None:
    """Apply migrations, then serve HTTP (uvicorn with uvloop and httptools)."""
    settings = _settings()
    upgrade(settings.database_url)
    if workers > 1:
        _share_metrics_between_workers()
    # After a graceful shutdown uvicorn raises the signal it caught again, for the previous
    # handler; the default handler would end the process with status -15. A stop asked for
    # by SIGTERM that went well is a success: exit 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        "stockroom.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        # On SIGTERM uvicorn stops accepting, lets in-flight requests finish for this long,
        # then cancels the rest (each answered 503), and runs the lifespan's shutdown.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),
    )


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def _share_metrics_between_workers() -> None:
    """Workers write their metrics to files in one folder, so that /metrics on any worker
    answers for all (prometheus-client's multiprocess mode). An operator's own
    PROMETHEUS_MULTIPROC_DIR is used if set; otherwise a fresh temporary folder. Values of
    an earlier run are removed: the folder must start empty."""
    folder = os.environ.get(MULTIPROC_DIR_VARIABLE)
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        folder = tempfile.mkdtemp(prefix="stockroom-metrics-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    # Inherited by the worker processes, which read it when they import prometheus-client.
    os.environ[MULTIPROC_DIR_VARIABLE] = folder


apikey = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
cli.add_typer(apikey, name="apikey")


def _with_session(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Migrate, then run ``work`` in a session of a short-lived engine."""
    settings = _settings()
    upgrade(settings.database_url)

    async def run() -> T:
        engine = create_engine(settings)
        try:
            async with create_session_factory(engine)() as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _scopes(value: str) -> list[str]:
    scopes = [s.strip() for s in value.split(",") if s.strip()]
    unknown = sorted(set(scopes) - set(keys.SCOPES))
    if unknown:
        raise typer.BadParameter(f"unknown scope {unknown[0]!r}; use {', '.join(keys.SCOPES)}")
    return scopes


@apikey.command("create")
def apikey_create(
    name: Annotated[str, typer.Option(help="A unique name for the key, e.g. ci or alice.")],
    scopes: Annotated[
        str, typer.Option(help="Comma-separated: read, write (implies read), admin (all).")
    ] = "read",
) -> None:
    """Create a key and print it, the only line on standard output. It is not shown again."""
    scope_list = _scopes(scopes)
    _record, secret = _with_session(lambda session: keys.create_key(session, name, scope_list))
    print(secret)  # noqa: T201


@apikey.command("list")
def apikey_list() -> None:
    """List keys (never their secrets)."""
    for record in _with_session(keys.list_keys):
        state = f"revoked {record.revoked_at:%Y-%m-%dT%H:%M:%SZ}" if record.revoked_at else "active"
        created = f"{record.created_at:%Y-%m-%dT%H:%M:%SZ}"
        print(f"{record.name}\t{record.scopes or '-'}\t{created}\t{state}")  # noqa: T201


@apikey.command("revoke")
def apikey_revoke(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Revoke a key. Running services refuse it within STOCKROOM_AUTH_CACHE_SECONDS."""
    _with_session(lambda session: keys.revoke_key(session, name))


def main() -> None:
    try:
        cli()
    except SettingsError as exc:
        print(f"stockroom: {exc}", file=sys.stderr)  # noqa: T201
        sys.exit(EXIT_BAD_SETTING)
    except StockroomError as exc:
        print(f"stockroom: {exc.detail}", file=sys.stderr)  # noqa: T201
        sys.exit(EXIT_FAILED)
