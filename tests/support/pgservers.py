"""Throwaway PostgreSQL 15 servers of a test's own, never the machine's shared cluster: to
crash one (``kill -9`` of its postmaster), restart it, and (for replicas) stand a second one
up behind it, promote it, hold back its replay.

Debian's binaries (``/usr/lib/postgresql/15/bin``), run as the ``postgres`` OS user when the
tests run as root (``subprocess``'s ``user=``, as ``runuser -u postgres`` would, but with no
process in between: the postmaster is the test's own child, so its pid is the one killed and
the test reaps it). Each server has a folder of its own in the factory's temporary folder (its
data directory, its unix socket, its log), a free port on 127.0.0.1 only, trust
authentication, small shared buffers and ``fsync`` on (a crash must lose nothing committed),
in memory (``/dev/shm``) where the machine has it.
``initdb`` runs once per test session (``pg_template``); each server starts from a copy of
that cluster, so a server costs a copy and a start (~0.1 s each in memory).

Use the ``pg_servers`` fixture (registered in tests/conftest.py)::

    def test_crash(pg_servers: PgServers) -> None:
        primary = pg_servers.start()             # a running server
        primary.psql("CREATE DATABASE app")
        url = primary.url_for("app")             # postgresql+asyncpg://postgres@127.0.0.1:P/app
        primary.kill9()                          # SIGKILL of the postmaster, backends gone
        primary.start()                          # crash recovery
        standby = primary.make_standby()         # pg_basebackup -R, started
        standby.pause_replay(); standby.replay_lsn(); standby.promote()

Every server is stopped and every folder removed at the fixture's teardown, whether the test
passed or not. A killed postmaster can stay a zombie on these machines (no init reaps it) and
its ``postmaster.pid`` and socket lock file then name a pid that still "exists": the next
start removes both once that process is dead or a zombie.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest

from tests.support.servers import free_port

__all__ = ["PG_BIN", "PgServer", "PgServers", "PgTemplate", "pg_servers", "pg_template"]

PG_BIN = Path("/usr/lib/postgresql/15/bin")
# PostgreSQL refuses to run as root; as root its programs run as this user.
RUN_AS = "postgres"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
# After the postmaster's SIGKILL, its backends notice and exit on their own; those still
# there after this long are killed too.
ORPHANS_GRACE = 1.0
# The servers' folders: in memory (tmpfs) where there is one. A crash of PostgreSQL (not of
# the machine) loses nothing the kernel has, so the page cache is as durable as a disk here,
# and a copy of the cluster or a recovery's sync of it does not wait on a disk shared with
# every other test (1-3 s each on a loaded machine, 0.1 s in memory).
_FOLDERS = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

_SETTINGS = """
# tests/support/pgservers.py
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
shared_buffers = 16MB
max_connections = 60
fsync = on
synchronous_commit = on
wal_level = replica
max_wal_senders = 5
max_replication_slots = 5
hot_standby = on
hot_standby_feedback = on
wal_keep_size = 64MB
logging_collector = off
log_min_messages = warning
log_line_prefix = '%m [%p] '
"""


def _user() -> tuple[int, int] | None:
    """The uid and gid to run PostgreSQL's programs as, or None to run them as we are."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(RUN_AS)
    return entry.pw_uid, entry.pw_gid


def _run(args: Sequence[str | Path], *, timeout: float = 60) -> str:
    """One of PostgreSQL's programs, as its user; its stdout. A failure says what it said."""
    ids = _user()
    done = subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=_env(),
        cwd="/",
        user=ids[0] if ids else None,
        group=ids[1] if ids else None,
        extra_groups=[] if ids else None,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{Path(str(args[0])).name} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C.UTF-8", TZ="UTC")
    return env


def _own(path: Path) -> None:
    ids = _user()
    if ids is not None:
        os.chown(path, *ids)


def _gone(pid: int) -> bool:
    """Whether ``pid`` is dead, or a zombie (dead, not yet reaped: it holds nothing)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class PgTemplate:
    """One ``initdb``'d cluster, copied for each server (``initdb`` itself costs ~0.8 s)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="stockroom-pgtemplate-", dir=_FOLDERS))
        self.folder.chmod(0o700)
        _own(self.folder)
        self.data = self.folder / "data"
        _run(
            [PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
             "--locale=C.UTF-8", "--wal-segsize=1", "--no-sync", "--no-instructions"]
        )  # fmt: skip

    def copy_to(self, data: Path) -> None:
        _run(["cp", "-a", self.data, data])

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class PgServer:
    """One PostgreSQL server in ``folder`` (its data directory, socket and log)."""

    def __init__(self, owner: PgServers, name: str, folder: Path, port: int) -> None:
        self.owner = owner  # the factory (its standbys are made there too)
        self.name = name
        self.folder = folder
        self.port = port
        self.data = folder / "data"
        self.log = folder / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None

    # --- addresses ---------------------------------------------------------------------------

    def url_for(self, database: str = "postgres") -> str:
        """SQLAlchemy's URL of ``database`` on this server (as tests/support/databases.py)."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for()

    def dsn(self, database: str = "postgres") -> str:
        """asyncpg's (and libpq's) form of the same."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def lock_file(self) -> Path:
        return self.folder / f".s.PGSQL.{self.port}.lock"

    # --- running -----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        if self.process is None or self.process.poll() is not None:
            return None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self) -> None:
        """Start the server (after a crash: its recovery) and return once it accepts
        connections (a standby: read-only ones)."""
        assert not self.running, f"{self.name} is already running"
        self._clear_stale_locks()
        ids = _user()
        with self.log.open("ab") as sink:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [str(PG_BIN / "postgres"), "-D", str(self.data)],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                env=_env(),
                cwd="/",
                start_new_session=True,  # a Ctrl-C of the test run is not the server's
                user=ids[0] if ids else None,
                group=ids[1] if ids else None,
                extra_groups=[] if ids else None,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while self._status() not in ("ready", "standby"):
            if self.process.poll() is not None:
                self.process = None
                raise RuntimeError(f"{self.name} did not start: {self._log_tail()}")
            if time.monotonic() > deadline:
                self.kill9()
                raise RuntimeError(
                    f"{self.name} not ready in {START_TIMEOUT} s: {self._log_tail()}"
                )
            time.sleep(0.02)

    def _status(self) -> str | None:
        """The postmaster's status line of postmaster.pid (``starting``, ``ready``,
        ``standby``, ``stopping``), if the file is this process's."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return None
        if len(lines) < 8 or self.process is None or lines[0].strip() != str(self.process.pid):
            return None
        return lines[7].strip()

    def stop(self) -> None:
        """A fast shutdown (SIGINT: sessions ended, a checkpoint); killed if not done within
        STOP_TIMEOUT seconds. Nothing if it is not running."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            children = self._children()
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill9()
                return
            self._reap(children)
        self.process = None

    def kill9(self) -> None:
        """SIGKILL of the postmaster, as a crash: no shutdown, no checkpoint. Returns once it
        and its backends (which exit on their own when it dies; killed after a second) are
        gone. The next :meth:`start` recovers from the WAL."""
        process = self.process
        if process is None:
            return
        children = self._children()
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
        # With them, any forked after the list was taken: a backend's working directory is
        # the data directory.
        self._reap([*children, *self._in_data_directory()])
        self.process = None

    def restart(self) -> None:
        """Stop (if running) and start again."""
        self.stop()
        self.start()

    def _children(self) -> list[psutil.Process]:
        if self.process is None:
            return []
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def _in_data_directory(self) -> list[psutil.Process]:
        found = []
        for candidate in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if candidate.cwd() == str(self.data):
                    found.append(candidate)
        return found

    @staticmethod
    def _reap(children: list[psutil.Process]) -> None:
        """Wait for the postmaster's children to be gone (or zombies): ORPHANS_GRACE, then
        SIGKILL."""
        deadline = time.monotonic() + ORPHANS_GRACE
        left = [child for child in children if not _gone(child.pid)]
        while left and time.monotonic() < deadline:
            time.sleep(0.01)
            left = [child for child in left if not _gone(child.pid)]
        for child in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        deadline = time.monotonic() + 5
        while any(not _gone(child.pid) for child in left) and time.monotonic() < deadline:
            time.sleep(0.01)

    def _clear_stale_locks(self) -> None:
        """Remove postmaster.pid and the socket's lock file if the pid they name is dead or a
        zombie (a postmaster killed and never reaped: PostgreSQL would take it as running).
        A live one is another server: refused."""
        for path in (self.data / "postmaster.pid", self.lock_file):
            try:
                first = path.read_text().splitlines()[0].strip()
            except (FileNotFoundError, IndexError):
                continue
            pid = int(first) if first.lstrip("-").isdigit() else 0
            if pid > 0 and not _gone(abs(pid)):
                raise RuntimeError(f"{self.name}: {path.name} names pid {pid}, still running")
            path.unlink(missing_ok=True)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    # --- SQL ---------------------------------------------------------------------------------

    def psql(self, sql: str, database: str = "postgres") -> str:
        """``sql`` through psql (autocommit, stop at the first error); its unaligned,
        tuples-only output, stripped."""
        return _run(
            [PG_BIN / "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database,
             "-c", sql]
        ).strip()  # fmt: skip

    async def connect(self, database: str = "postgres") -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn(database), timeout=5)

    async def execute(self, sql: str, *args: Any, database: str = "postgres") -> str:
        """``sql`` on a connection of its own; the status (``INSERT 0 1``)."""
        connection = await self.connect(database)
        try:
            status: str = await connection.execute(sql, *args)
            return status
        finally:
            await connection.close()

    async def fetch(self, sql: str, *args: Any, database: str = "postgres") -> list[Any]:
        """The rows of ``sql`` (asyncpg Records), on a connection of its own."""
        connection = await self.connect(database)
        try:
            rows: list[Any] = await connection.fetch(sql, *args)
            return rows
        finally:
            await connection.close()

    async def fetchval(self, sql: str, *args: Any, database: str = "postgres") -> Any:
        connection = await self.connect(database)
        try:
            return await connection.fetchval(sql, *args)
        finally:
            await connection.close()

    def create_database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    # --- replication -------------------------------------------------------------------------

    def current_lsn(self) -> str:
        """The primary's current WAL write position."""
        return self.psql("SELECT pg_current_wal_lsn()")

    def replay_lsn(self) -> str:
        """How far a standby has replayed."""
        return self.psql("SELECT pg_last_wal_replay_lsn()")

    def pause_replay(self) -> None:
        """A standby stops applying WAL (it still receives it), until resume_replay."""
        self.psql("SELECT pg_wal_replay_pause()")
        deadline = time.monotonic() + 10
        while self.psql("SELECT pg_get_wal_replay_pause_state()") != "paused":
            assert time.monotonic() < deadline, "replay did not pause"
            time.sleep(0.01)

    def resume_replay(self) -> None:
        self.psql("SELECT pg_wal_replay_resume()")

    def is_in_recovery(self) -> bool:
        return self.psql("SELECT pg_is_in_recovery()") == "t"

    def promote(self) -> None:
        """A standby becomes a primary; returns once it accepts writes."""
        assert self.psql("SELECT pg_promote(wait => true, wait_seconds => 30)") == "t"

    def wait_replayed(self, lsn: str, timeout: float = 10) -> None:
        """Wait until a standby has replayed up to ``lsn`` (e.g. the primary's current_lsn)."""
        deadline = time.monotonic() + timeout
        while self.psql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn") != "t":
            assert time.monotonic() < deadline, f"{self.name} did not replay up to {lsn}"
            time.sleep(0.02)

    def make_standby(self, name: str | None = None, *, synchronous: bool = False) -> PgServer:
        """A hot standby of this running server, started (see PgServers.make_standby)."""
        return self.owner.make_standby(self, name, synchronous=synchronous)

    def set_synchronous_standbys(self, names: str) -> None:
        """The primary's ``synchronous_standby_names`` (``''``: none), reloaded."""
        quoted = names.replace("'", "''")
        self.psql(f"ALTER SYSTEM SET synchronous_standby_names = '{quoted}'")
        self.psql("SELECT pg_reload_conf()")


class PgServers:
    """Makes a test's servers; :meth:`close` stops them all and removes their folders."""

    def __init__(self, template: PgTemplate) -> None:
        self._template = template
        self.folder = Path(tempfile.mkdtemp(prefix="stockroom-pg-", dir=_FOLDERS))
        self.folder.chmod(0o700)
        _own(self.folder)
        self.servers: list[PgServer] = []

    def _new(self, name: str | None) -> PgServer:
        name = name or f"pg{len(self.servers) + 1}"
        assert all(server.name != name for server in self.servers), name
        folder = self.folder / name
        folder.mkdir(mode=0o700)
        _own(folder)
        server = PgServer(self, name, folder, free_port())
        self.servers.append(server)
        return server

    def _configure(self, server: PgServer, extra: str) -> None:
        settings = _SETTINGS.format(port=server.port, sockets=server.folder)
        with (server.data / "postgresql.conf").open("a") as conf:
            conf.write(settings + extra)

    def create(self, name: str | None = None, settings: str = "") -> PgServer:
        """A new server, not started; ``settings``: more lines of postgresql.conf."""
        server = self._new(name)
        self._template.copy_to(server.data)
        self._configure(server, settings)
        return server

    def start(self, name: str | None = None, settings: str = "") -> PgServer:
        """A new server, started."""
        server = self.create(name, settings)
        server.start()
        return server

    def make_standby(
        self, primary: PgServer, name: str | None = None, *, synchronous: bool = False
    ) -> PgServer:
        """A hot standby of the running ``primary`` (``pg_basebackup -R``: streaming, its
        application_name is its ``name``), started. ``synchronous``: the primary's commits
        then wait for it (``synchronous_standby_names``)."""
        server = self._new(name)
        _run(
            [PG_BIN / "pg_basebackup", "-D", server.data, "-h", "127.0.0.1",
             "-p", str(primary.port), "-U", "postgres", "-R", "-X", "stream",
             "--checkpoint=fast", "--no-sync"]
        )  # fmt: skip
        # The copied postgresql.conf is the primary's; the later lines win.
        self._configure(server, f"cluster_name = '{server.name}'\n")
        server.start()
        if synchronous:
            primary.set_synchronous_standbys(server.name)
        return server

    def close(self) -> None:
        """Stop every server (killed if need be) and remove every folder."""
        for server in self.servers:
            try:
                server.stop()
            except Exception:
                server.kill9()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[PgTemplate]:
    """``initdb`` once per test session; skipped (a failure in CI) without PostgreSQL 15."""
    if not (PG_BIN / "postgres").exists():
        from tests.support.databases import IN_CI

        message = f"PostgreSQL 15 is not installed ({PG_BIN})"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    template = PgTemplate()
    try:
        yield template
    finally:
        template.remove()


@pytest.fixture
def pg_servers(pg_template: PgTemplate) -> Iterator[PgServers]:
    """A factory of throwaway servers for one test; all stopped and removed afterwards."""
    servers = PgServers(pg_template)
    try:
        yield servers
    finally:
        servers.close()
