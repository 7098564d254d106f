"""The ``stockroom`` command: serve | worker | migrate | apikey | import | export."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from pydantic import ValidationError
from typer._click import exceptions as click  # typer's own copy of click: its errors

from stockroom import __version__
from stockroom.auth.schemas import KEY_NAME_RULE, KeyCreate
from stockroom.errors import StockroomError

# The rest of the app (FastAPI, SQLAlchemy, Alembic, the stores) is imported inside the
# commands that use it: a person waits for this command's start-up, and --version, -h or a
# usage error should not cost the web app's imports (seconds on a busy machine).
if TYPE_CHECKING:
    from types import FrameType

    from sqlalchemy.ext.asyncio import AsyncSession

    from stockroom.files.schemas import ImportReport
    from stockroom.resources import Resources
    from stockroom.settings import Settings

__all__ = ["main"]

EXIT_FAILED = 1
EXIT_BAD_SETTING = 2
EXIT_USAGE = 2  # as click's own usage errors
# Longest reason quoted from a database driver, so that a failure stays one short line.
_REASON_MAX_CHARS = 200
T = TypeVar("T")

cli = typer.Typer(
    name="stockroom",
    help="Stockroom, an async inventory service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        print(f"stockroom {__version__}")  # noqa: T201
        raise typer.Exit()


@cli.callback()
def _top(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Stockroom, an async inventory service."""


class DatabaseUnusableError(Exception):
    """The database cannot be used; ``str()`` is one line naming it (password masked)."""


class BadSettingError(Exception):
    """A setting is wrong; ``str()`` says which, one line per bad variable."""


def _settings() -> Settings:
    import structlog

    # Every command that reads the settings migrates: Alembic is imported before logging
    # is configured, as it logs each of its plugins (at info) when first imported.
    from stockroom import migrations  # noqa: F401
    from stockroom.observability import configure_logging
    from stockroom.settings import SettingsError, load_settings, unknown_variables

    try:
        settings = load_settings()
    except SettingsError as exc:
        raise BadSettingError(str(exc)) from None
    configure_logging(settings.log_level_number)
    for line in unknown_variables(os.environ):
        structlog.get_logger("stockroom.cli").warning(line)
    return settings


def _describe_database_failure(settings: Settings, exc: BaseException) -> str:
    """One line: the URL with its password masked, and why it cannot be used, in the
    driver's words but without SQL or a traceback."""
    url = settings.database.render_as_string(hide_password=True)
    return f"cannot use the database {url}: {_unusable_before_connecting(settings) or _reason(exc)}"


def _unusable_before_connecting(settings: Settings) -> str | None:
    from stockroom.stores import unusable_reason

    return unusable_reason(settings)


def _reason(exc: BaseException) -> str:
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        # asyncpg's own exception (the cause) says it best: 'database "x" does not exist'.
        text = str(exc.orig.__cause__ or exc.orig)
    elif isinstance(exc, ConnectionRefusedError):
        text = "connection refused"
    elif isinstance(exc, socket.gaierror):
        text = f"cannot resolve the host ({exc.strerror})"
    elif isinstance(exc, TimeoutError | sa_exc.TimeoutError):
        text = "no answer in time"
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:_REASON_MAX_CHARS]


@contextlib.contextmanager
def _database(settings: Settings, *, connecting: bool = False) -> Iterator[None]:
    """Turn a database failure into :class:`DatabaseUnusableError`. While ``connecting`` (the
    first connection, by the migrations) any OS error is the database's too: a refused
    connection, an unknown host, a timeout."""
    from sqlalchemy import exc as sa_exc

    from stockroom.migrations import MigrationRefusedError

    failures: tuple[type[BaseException], ...] = (
        sa_exc.DBAPIError,
        sa_exc.TimeoutError,
        MigrationRefusedError,
    )
    if connecting:
        failures = (*failures, OSError)
    try:
        yield
    except failures as exc:
        raise DatabaseUnusableError(_describe_database_failure(settings, exc)) from None


def _migrate(settings: Settings) -> None:
    from stockroom.migrations import upgrade

    # Checked before connecting (a missing SQLite folder: see database/_sqlite.py).
    if _unusable_before_connecting(settings):
        raise DatabaseUnusableError(_describe_database_failure(settings, FileNotFoundError()))
    with _database(settings, connecting=True):
        upgrade(settings.database_url)


@cli.command()
def migrate() -> None:
    """Apply database migrations and exit."""
    _migrate(_settings())


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
) -> None:
    """Apply migrations, then serve HTTP (uvicorn with uvloop and httptools)."""
    settings = _settings()
    _check_port(host, port)
    _migrate(settings)
    if workers > 1:
        _share_metrics_between_workers()
    # After a graceful shutdown uvicorn raises the signal it caught again, for the previous
    # handler; the default handler would end the process with status -15. A stop asked for
    # by SIGTERM that went well is a success: exit 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    import uvicorn

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
    _migrate(settings)
    with _database(settings):
        asyncio.run(_deliver_webhooks(settings))


async def _deliver_webhooks(settings: Settings) -> None:
    import structlog

    from stockroom.background import event_services
    from stockroom.stores import open_resources

    log = structlog.get_logger("stockroom.cli")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with (
        open_resources(settings) as resources,
        event_services(resources, serving=False, dispatcher=True),
    ):
        log.info("worker started", database=settings.backend)
        await stop.wait()
        log.info("worker stopping")
    log.info("worker stopped")


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def _check_port(host: str, port: int) -> None:
    """Fail in one line now if the address is taken, rather than after the app started."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise click.ClickException(f"cannot listen on {host}: {exc.strerror}") from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn binds: SO_REUSEADDR lets a port in TIME_WAIT be reused, never one
        # another process listens on.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise click.ClickException(f"cannot listen on {host}:{port}: {reason}") from None


def _share_metrics_between_workers() -> None:
    """Workers write their metrics to files in one folder, so that /metrics on any worker
    answers for all (prometheus-client's multiprocess mode). An operator's own
    PROMETHEUS_MULTIPROC_DIR is used if set; otherwise a fresh temporary folder. Values of
    an earlier run are removed: the folder must start empty."""
    from stockroom.observability import MULTIPROC_DIR_VARIABLE

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
    """Migrate, then run ``work`` in a session of the process's resources."""

    async def in_session(resources: Resources) -> T:
        async with resources.sessions() as session:
            return await work(session)

    return _with_resources(in_session)


def _shown(name: str) -> str:
    """A name as quoted in a one-line message: escaped, and cut if long."""
    return repr(name) if len(name) <= 40 else f"{name[:40]!r}... ({len(name)} characters)"


def _key_name(name: str) -> str:
    """The name if POST /keys would take it (the same rule, KeyName), else a usage error."""
    try:
        KeyCreate.model_validate({"name": name, "scopes": []})
    except ValidationError:
        raise typer.BadParameter(f"{_shown(name)} is not a key name: {KEY_NAME_RULE}") from None
    return name


def _scopes(value: str) -> list[str]:
    """Comma-separated scopes, checked by the model POST /keys checks its body with."""
    scopes = list(dict.fromkeys(s.strip() for s in value.split(",") if s.strip()))
    try:
        KeyCreate.model_validate({"name": "scopes", "scopes": scopes})
    except ValidationError:
        from stockroom.auth import service as keys

        unknown = [s for s in scopes if s not in keys.SCOPES]
        shown = f"unknown scope {_shown(unknown[0])}" if unknown else f"bad scopes {value!r}"
        raise typer.BadParameter(f"{shown}; use {', '.join(keys.SCOPES)}") from None
    return scopes


def _check_scopes(value: str) -> str:
    _scopes(value)
    return value


@apikey.command("create")
def apikey_create(
    name: Annotated[
        str,
        typer.Option(
            help=f"A unique name for the key, e.g. ci or alice: {KEY_NAME_RULE}.",
            callback=_key_name,
        ),
    ],
    scopes: Annotated[
        str,
        typer.Option(
            help="Comma-separated: read, write (implies read), admin (all).",
            callback=_check_scopes,
        ),
    ] = "read",
) -> None:
    """Create a key and print it, the only line on standard output. It is not shown again."""
    from stockroom.auth import service as keys

    scope_list = _scopes(scopes)
    _record, secret = _with_session(lambda session: keys.create_key(session, name, scope_list))
    print(secret)  # noqa: T201


@apikey.command("list")
def apikey_list() -> None:
    """List keys (never their secrets)."""
    from stockroom.auth import service as keys

    for record in _with_session(keys.list_keys):
        state = f"revoked {record.revoked_at:%Y-%m-%dT%H:%M:%SZ}" if record.revoked_at else "active"
        created = f"{record.created_at:%Y-%m-%dT%H:%M:%SZ}"
        print(f"{record.name}\t{record.scopes or '-'}\t{created}\t{state}")  # noqa: T201


@apikey.command("revoke")
def apikey_revoke(
    name: Annotated[str, typer.Argument(help="The key's name.", callback=_key_name)],
) -> None:
    """Revoke a key. Running services refuse it within STOCKROOM_AUTH_CACHE_SECONDS."""
    from stockroom.auth import service as keys

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


def _with_resources(work: Callable[[Resources], Awaitable[T]]) -> T:
    """Migrate, then run ``work`` with the resources of a process (as the app's lifespan
    opens them), then close them."""
    from stockroom.stores import open_resources

    settings = _settings()
    _migrate(settings)

    async def run() -> T:
        async with open_resources(settings) as resources:
            return await work(resources)

    with _database(settings):
        return asyncio.run(run())


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
    from stockroom.files import service as files
    from stockroom.files.formats import CsvReader, NdjsonReader

    kind = format or ("ndjson" if path.suffix.lower() in (".ndjson", ".jsonl") else "csv")
    reader: files.Reader = NdjsonReader() if kind == "ndjson" else CsvReader()
    progress = _Progress("imported")

    async def chunks() -> AsyncIterator[bytes]:
        with path.open("rb") as stream:  # read in a worker thread, chunk by chunk
            while chunk := await asyncio.to_thread(stream.read, _FILE_CHUNK):
                yield chunk

    async def work(resources: Resources) -> ImportReport:
        stores = resources.stores
        return await files.import_items(
            stores.database, stores.writer, chunks(), reader, atomic=atomic, progress=progress
        )

    try:
        report = _with_resources(work)
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
    from stockroom.files import service as files
    from stockroom.items.repository import ItemFilter, Keyset, Listing
    from stockroom.items.schemas import SORT_KEYS

    if format not in files.EXPORT_FORMATS:
        raise typer.BadParameter("use csv or ndjson", param_hint="--format")
    if sort.removeprefix("-") not in SORT_KEYS:
        raise typer.BadParameter(f"use one of {', '.join(SORT_KEYS)}", param_hint="--sort")
    progress = _Progress("exported")
    out = sys.stdout.buffer

    async def work(resources: Resources) -> None:
        lines = 0
        listing = Listing(ItemFilter(), Keyset(sort))
        async for chunk in files.export_chunks(resources.stores.items, listing, format):
            await asyncio.to_thread(out.write, chunk)
            lines += chunk.count(b"\n")
            progress(lines)
        await asyncio.to_thread(out.flush)

    _with_resources(work)
    progress.done()


def main() -> None:
    """Run the command. Every failure is one line on standard error and an exit status:
    2 for a bad setting or bad usage, 1 for anything else; never a traceback."""
    try:
        # Not standalone: click's errors come here, to be told in one line (typer's own
        # rendering is a box of several).
        status = cli(standalone_mode=False)
    except click.NoArgsIsHelpError as exc:
        # The help, as click gives it for a bare command (typer prints it as it builds it).
        if exc.format_message().strip():
            print(exc.format_message())  # noqa: T201
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        _fail(
            _click_message(exc), EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code
        )
    except typer.Abort:
        _fail("stockroom: aborted", EXIT_FAILED)
    except BadSettingError as exc:
        _fail(f"stockroom: {exc}", EXIT_BAD_SETTING)
    except DatabaseUnusableError as exc:
        _fail(f"stockroom: {exc}", EXIT_FAILED)
    except StockroomError as exc:
        _fail(f"stockroom: {exc.detail}", EXIT_FAILED)
    sys.exit(status if isinstance(status, int) else 0)


def _click_message(exc: click.ClickException) -> str:
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        return f"{ctx.command_path}: {message} (see {ctx.command_path} --help)"
    return f"stockroom: {message}"


def _fail(line: str, status: int) -> None:
    print(line, file=sys.stderr)  # noqa: T201
    sys.exit(status)
