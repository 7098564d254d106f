"""The `stockroom` command as an operator meets it: the console script of this venv, run as a
subprocess against real databases. Every failure is one line on stderr (no traceback, the
password masked) and an exit status; a misspelt setting is a warning; --version, -h."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from stockroom import __version__
from tests.support.databases import IN_CI, PG_ADMIN_URL
from tests.support.problems import problem
from tests.support.processes import Batch
from tests.support.servers import free_port, start_server, stockroom_env

STOCKROOM = str(Path(sys.executable).with_name("stockroom"))
PASSWORD = "s3cret-Pa55"


def run(
    *args: str, cwd: Path, database_url: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    base = (
        stockroom_env(database_url)
        if database_url
        else {k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")}
    )
    return subprocess.run(
        [STOCKROOM, *args],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line_failure(result: subprocess.CompletedProcess[str], status: int) -> str:
    """Assert the command failed with ``status``, one line on stderr, nothing on stdout."""
    assert result.returncode == status, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    return lines[0]


BAD_NAMES = ["", "bad name!", "tab\tname", "bell\x07name", "new\nline", "x" * 300, "x" * 101]


async def test_post_keys_refuses_the_bad_names(client: httpx.AsyncClient) -> None:
    """The names the CLI must refuse, as POST /keys refuses them (on every backend)."""
    for name in BAD_NAMES:
        problem(await client.post("/keys", json={"name": name, "scopes": ["read"]}), 422)


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_a_key_name_post_keys_refuses_is_refused_by_the_cli(tmp_path: Path, name: str) -> None:
    # On no database: the name is checked as the arguments are parsed, before any database
    # work (no database file appears), so the backend cannot change the answer. The
    # PostgreSQL case that once failed later, with a traceback, is the next test.
    for args in (("apikey", "create", "--name", name), ("apikey", "revoke", name)):
        line = one_line_failure(run(*args, cwd=tmp_path), 2)
        assert line.startswith(f"stockroom {args[0]} {args[1]}: Invalid value")
        assert "is not a key name: 1 to 100 characters" in line
    assert not (tmp_path / "stockroom.db").exists()


@pytest.mark.postgresql_only
def test_a_101_character_name_is_refused_on_postgresql(database_url: str, tmp_path: Path) -> None:
    """101 characters used to pass the CLI and fail in PostgreSQL's varchar(100), with a
    traceback: now refused in one line, and no key is made."""
    name = "x" * 101
    line = one_line_failure(
        run("apikey", "create", "--name", name, cwd=tmp_path, database_url=database_url), 2
    )
    assert "is not a key name: 1 to 100 characters" in line
    listed = run("apikey", "list", cwd=tmp_path, database_url=database_url)
    assert listed.returncode == 0, listed.stderr
    assert all(line.split("\t")[0] != name for line in listed.stdout.splitlines())


async def test_the_longest_name_post_keys_takes_the_cli_takes(
    database_url: str, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    name = "k" * 92 + uuid.uuid4().hex[:8]  # 100 characters
    created = run("apikey", "create", "--name", name, cwd=tmp_path, database_url=database_url)
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("sr_")
    assert (await client.delete(f"/keys/{name}")).status_code == 204
    over_http = await client.post("/keys", json={"name": "h" + name[1:], "scopes": ["read"]})
    assert over_http.status_code == 201, over_http.text


@pytest.mark.parametrize("scopes", ["read,root", "READ", "read;write"])
def test_scopes_post_keys_refuses_are_refused(tmp_path: Path, scopes: str) -> None:
    result = run("apikey", "create", "--name", "x", "--scopes", scopes, cwd=tmp_path)
    line = one_line_failure(result, 2)
    assert "Invalid value for '--scopes'" in line
    assert "use read, write, admin" in line
    assert not (tmp_path / "stockroom.db").exists()  # refused before any database work


def _postgres_reachable() -> bool:
    url = make_url(PG_ADMIN_URL)
    try:
        socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=2).close()
    except OSError:
        if IN_CI:
            pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is not reachable", pytrace=False)
        return False
    return True


def _unusable(kind: str, tmp_path: Path) -> tuple[str, str]:
    """A database URL that parses but cannot be used, and the reason the line must give."""
    if kind == "sqlite-folder-missing":
        return f"sqlite+aiosqlite:///{tmp_path}/no/such/folder/stock.db", "does not exist"
    if not _postgres_reachable():
        pytest.skip("PostgreSQL is not reachable")
    admin = make_url(PG_ADMIN_URL).set(drivername="postgresql+asyncpg")
    if kind == "connection-refused":
        url = admin.set(port=free_port(), database="stockroom", password=PASSWORD)
        return url.render_as_string(hide_password=False), "connection refused"
    if kind == "no-such-database":
        url = admin.set(database=f"missing_{uuid.uuid4().hex[:8]}", password=PASSWORD)
        return url.render_as_string(hide_password=False), "does not exist"
    assert kind == "no-such-role"
    url = admin.set(username="nobody_here", password=PASSWORD)
    return url.render_as_string(hide_password=False), 'role "nobody_here" does not exist'


COMMANDS = [
    ("migrate",),
    ("serve", "--port", "0"),
    ("worker",),
    ("apikey", "list"),
    ("apikey", "create", "--name", "ops"),
    ("apikey", "revoke", "ops"),
    ("export",),
    ("import", "items.csv"),
]
FAILURES = ["sqlite-folder-missing", "connection-refused", "no-such-database", "no-such-role"]


Unusable = tuple[tuple[str, ...], str]  # (command, failure)


@pytest.fixture(scope="module")
def unusable_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Batch[Unusable], dict[Unusable, tuple[str, str]]]]:
    """A process per (command, failure), a few at a time, each in a folder of its own; and
    each case's database URL and the reason its line must give."""
    urls: dict[Unusable, tuple[str, str]] = {}

    def command(case: Unusable) -> tuple[list[str], dict[str, str], Path]:
        folder = tmp_path_factory.mktemp("unusable")
        (folder / "items.csv").write_text("sku,name,price\nA,a,1\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")}
        return [STOCKROOM, *case[0]], {**env, "STOCKROOM_DATABASE_URL": urls[case][0]}, folder

    folder = tmp_path_factory.mktemp("unusable-urls")
    reachable = _postgres_reachable()
    for kind in FAILURES:
        if kind == "sqlite-folder-missing" or reachable:  # the others skip
            for args in COMMANDS:
                urls[(args, kind)] = _unusable(kind, folder)
    batch = Batch(list(urls), command)
    try:
        yield batch, urls
    finally:
        batch.close()


@pytest.mark.parametrize("kind", FAILURES)
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_an_unusable_database_is_one_line_naming_it(
    unusable_runs: tuple[Batch[Unusable], dict[Unusable, tuple[str, str]]],
    command: tuple[str, ...],
    kind: str,
) -> None:
    batch, urls = unusable_runs
    if (command, kind) not in urls:
        pytest.skip("PostgreSQL is not reachable")
    url, reason = urls[(command, kind)]
    result, _folder = batch.result((command, kind))
    line = one_line_failure(result, 1)
    shown = make_url(url).render_as_string(hide_password=True)
    assert line.startswith(f"stockroom: cannot use the database {shown}: "), line
    assert reason in line
    assert PASSWORD not in line


def test_serve_on_a_taken_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--port", str(port), cwd=tmp_path)
    line = one_line_failure(result, 1)
    assert line == f"stockroom: cannot listen on 127.0.0.1:{port}: address already in use"


@pytest.mark.parametrize(
    "args", [("serve", "--bogus"), ("nope",), ("serve", "--port", "99999"), ("import",)]
)
def test_bad_usage_is_one_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    line = one_line_failure(run(*args, cwd=tmp_path), 2)
    assert line.startswith("stockroom")
    assert line.endswith("--help)")


def test_a_misspelt_setting_is_a_warning_naming_it(tmp_path: Path) -> None:
    result = run("migrate", cwd=tmp_path, STOCKROOM_DATABSE_URL="sqlite:///elsewhere.db")
    assert result.returncode == 0, result.stderr  # a warning does not stop start-up
    warnings = [line for line in result.stderr.splitlines() if "STOCKROOM_DATABSE_URL" in line]
    assert len(warnings) == 1
    assert '"level":"warning"' in warnings[0]
    assert "did you mean STOCKROOM_DATABASE_URL?" in warnings[0]
    assert (tmp_path / "stockroom.db").exists()  # the default, as the variable is ignored


def test_serve_warns_of_a_misspelt_setting_and_starts(database_url: str, tmp_path: Path) -> None:
    server = start_server(database_url, tmp_path, env_extra={"STOCKROOM_LOG_LEVL": "debug"})
    try:
        assert httpx.get(f"{server.url}/ping", timeout=5).status_code == 200
    finally:
        server.stop()
    warnings = [line for line in server.log_lines() if "STOCKROOM_LOG_LEVL" in str(line)]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert "did you mean STOCKROOM_LOG_LEVEL?" in str(warnings[0]["event"])


def test_version(tmp_path: Path) -> None:
    result = run("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == f"stockroom {__version__}\n"


HELPED = [(), ("serve",), ("migrate",), ("worker",), ("apikey",), ("apikey", "create"),
          ("import",), ("export",)]  # fmt: skip
HELP_FLAGS = ["-h", "--help"]


@pytest.fixture(scope="module")
def help_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Batch[tuple[tuple[str, ...], str]]]:
    """`stockroom ... -h` per (command, flag), a few at a time, each in a folder of its own."""

    def command(case: tuple[tuple[str, ...], str]) -> tuple[list[str], dict[str, str], Path]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")}
        return [STOCKROOM, *case[0], case[1]], env, tmp_path_factory.mktemp("help")

    batch = Batch([(c, f) for f in HELP_FLAGS for c in HELPED], command)
    try:
        yield batch
    finally:
        batch.close()


@pytest.mark.parametrize("command", HELPED, ids=" ".join)
@pytest.mark.parametrize("flag", HELP_FLAGS)
def test_help(
    help_runs: Batch[tuple[tuple[str, ...], str]], command: tuple[str, ...], flag: str
) -> None:
    result, folder = help_runs.result((command, flag))
    assert result.returncode == 0, result.stderr
    assert f"Usage: {' '.join(('stockroom', *command))}" in result.stdout
    assert result.stderr == ""
    assert not (folder / "stockroom.db").exists()


_FAILING_START_UP = """
import asyncio, contextlib, logging, sys
import uvicorn
from starlette.applications import Starlette
from stockroom.middleware import RequestContextMiddleware
from stockroom.observability import AccessLog, Metrics, configure_logging

@contextlib.asynccontextmanager
async def lifespan(app):
    await asyncio.open_connection("127.0.0.1", int(sys.argv[1]))  # nothing listens there
    yield

configure_logging(logging.INFO)
app = RequestContextMiddleware(
    Starlette(lifespan=lifespan), metrics=Metrics(), access_log=AccessLog(logging.INFO)
)
uvicorn.run(app, port=0, loop="uvloop", http="httptools", lifespan="on", log_config=None)
"""


def test_a_failed_start_up_inside_uvicorn_is_one_line(tmp_path: Path) -> None:
    """No start-up of `stockroom serve` fails inside uvicorn today (the database is checked
    before it starts, and the lifespan keeps trying when the database is away); should one,
    uvicorn logs it as one line with the reason, as here, with the serve command's
    middleware and logging around a lifespan whose connection is refused."""
    result = subprocess.run(
        [sys.executable, "-c", _FAILING_START_UP, str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if '"level":"error"' in line]
    assert len(errors) == 1, result.stderr
    assert "Application start-up failed: ConnectionRefusedError:" in errors[0]
