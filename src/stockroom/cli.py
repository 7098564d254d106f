"""The ``stockroom`` command: serve | worker | migrate | apikey | import | export."""

from __future__ import annotations

import asyncio
import atexit
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, TypeVar

import structlog
import typer
import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from stockroom.auth import service as keys
from stockroom.background import event_services
from stockroom.db import create_session_factory
from stockroom.errors import StockroomError
from stockroom.events.wakeup import SESSION_WAKEUP, Wakeup
from stockroom.files import service as files
from stockroom.files.formats import CsvReader, NdjsonReader
from stockroom.files.schemas import ImportReport
from stockroom.items.repository import ItemFilter, Keyset, Listing
from stockroom.items.schemas import SORT_KEYS
from stockroom.migrations import upgrade
from stockroom.observability import MULTIPROC_DIR_VARIABLE, configure_logging
from stockroom.settings import Settings, SettingsError, load_settings
from stockroom.stores import Stores, create_engine, open_stores

__all__ = ["main"]

EXIT_FAILED = 1
EXIT_BAD_SETTING = 2
T = TypeVar("T")

log = structlog.get_logger("stockroom.cli")

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


@cli.command()
def worker() -> None:
    """Apply migrations, then only deliver webhooks (no HTTP) until SIGTERM or Ctrl-C,
    letting deliveries in flight finish within STOCKROOM_SHUTDOWN_TIMEOUT."""
    settings = _settings()
    upgrade(settings.database_url)
    asyncio.run(_deliver_webhooks(settings))


async def _deliver_webhooks(settings: Settings) -> None:
    engine = create_engine(settings)
    wakeup = Wakeup(settings.events_poll_seconds)
    sessions = create_session_factory(engine, info={SESSION_WAKEUP: wakeup.wake})
    stores = open_stores(settings, engine, on_commit=wakeup.wake)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stores.database.start()
        async with event_services(settings, sessions, stores.database, wakeup, dispatcher=True):
            log.info("worker started", database=settings.backend)
            await stop.wait()
            log.info("worker stopping")
    finally:
        await stores.database.close()
        await engine.dispose()
    log.info("worker stopped")


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


_FILE_CHUNK = 262_144


class _Progress:
    """Rows and rows/s on standard error, when it is a terminal; silent otherwise."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.enabled = sys.stderr.isatty()
        self.started = time.monotonic()
        self.shown = 0.0
        self.rows = 0

    def __call__(self, rows: int) -> None:
        self.rows = rows
        now = time.monotonic()
        if self.enabled and now - self.shown >= 0.25:
            self.shown = now
            rate = rows / max(now - self.started, 1e-9)
            sys.stderr.write(f"\r{self.verb} {rows:,} rows, {rate:,.0f} rows/s ")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            self(self.rows)
            sys.stderr.write("\n")


def _run_with_engine(
    work: Callable[[AsyncEngine, async_sessionmaker[AsyncSession]], Awaitable[T]],
) -> T:
    settings = _settings()
    upgrade(settings.database_url)

    async def run() -> T:
        engine = create_engine(settings)
        try:
            return await work(engine, create_session_factory(engine))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _run_with_stores(work: Callable[[Stores], Awaitable[T]]) -> T:
    """Run ``work`` with the stores of the configured database, then close them."""

    async def run(engine: AsyncEngine, _sessions: Any) -> T:
        stores = open_stores(_settings(), engine, on_commit=lambda: None)
        await stores.database.start()
        try:
            return await work(stores)
        finally:
            await stores.database.close()

    return _run_with_engine(run)


@cli.command("import")
def import_file(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV or NDJSON file.")],
    atomic: Annotated[bool, typer.Option(help="All rows or none.")] = False,
    format: Annotated[
        str | None, typer.Option(help="csv or ndjson (default: from the file name).")
    ] = None,
) -> None:
    """Import items from a file, through the same code as POST /items/import; prints the
    report as JSON. Exit status 1 if any row failed."""
    kind = format or ("ndjson" if path.suffix.lower() in (".ndjson", ".jsonl") else "csv")
    reader: files.Reader = NdjsonReader() if kind == "ndjson" else CsvReader()
    progress = _Progress("imported")

    async def chunks() -> AsyncIterator[bytes]:
        with path.open("rb") as stream:  # read in a worker thread, chunk by chunk
            while chunk := await asyncio.to_thread(stream.read, _FILE_CHUNK):
                yield chunk

    async def work(stores: Stores) -> ImportReport:
        return await files.import_items(
            stores.database, stores.writer, chunks(), reader, atomic=atomic, progress=progress
        )

    try:
        report = _run_with_stores(work)
    except files.ImportRejectedError as exc:
        progress.done()
        print(exc.report.model_dump_json(), file=sys.stderr)  # noqa: T201
        raise StockroomError(exc.detail) from None
    progress.done()
    print(report.model_dump_json())  # noqa: T201
    if report.failed:
        sys.exit(EXIT_FAILED)


@cli.command("export")
def export_file(
    format: Annotated[str, typer.Option(help="csv or ndjson.")] = "csv",
    sort: Annotated[str, typer.Option(help="As the list's sort, e.g. -price.")] = "id",
) -> None:
    """Write every item to standard output, through the same code as GET /items/export."""
    if format not in files.EXPORT_FORMATS:
        raise typer.BadParameter("use csv or ndjson", param_hint="--format")
    if sort.removeprefix("-") not in SORT_KEYS:
        raise typer.BadParameter(f"use one of {', '.join(SORT_KEYS)}", param_hint="--sort")
    progress = _Progress("exported")
    out = sys.stdout.buffer

    async def work(stores: Stores) -> None:
        lines = 0
        listing = Listing(ItemFilter(), Keyset(sort))
        async for chunk in files.export_chunks(stores.items, listing, format):
            await asyncio.to_thread(out.write, chunk)
            lines += chunk.count(b"\n")
            progress(lines)
        await asyncio.to_thread(out.flush)

    _run_with_stores(work)
    progress.done()


def main() -> None:
    try:
        cli()
    except SettingsError as exc:
        print(f"stockroom: {exc}", file=sys.stderr)  # noqa: T201
        sys.exit(EXIT_BAD_SETTING)
    except StockroomError as exc:
        print(f"stockroom: {exc.detail}", file=sys.stderr)  # noqa: T201
        sys.exit(EXIT_FAILED)
