"""The throwaway PostgreSQL servers of tests/support/pgservers.py: a crash and its restart,
a standby, its replay held back and resumed, its promotion."""

from __future__ import annotations

import psutil

from tests.support.pgservers import PgServers


async def test_crash_restart_standby_pause_and_promote(pg_servers: PgServers) -> None:
    primary = pg_servers.start("primary")
    assert primary.url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
    primary.psql("CREATE TABLE t (x int)")
    standby = primary.make_standby("standby")
    assert standby.is_in_recovery()
    primary.psql("INSERT INTO t VALUES (1)")
    standby.wait_replayed(primary.current_lsn())
    assert standby.psql("SELECT count(*) FROM t") == "1"

    standby.pause_replay()
    primary.psql("INSERT INTO t VALUES (2)")
    written = primary.current_lsn()
    assert standby.psql("SELECT count(*) FROM t") == "1"  # received, not applied
    standby.resume_replay()
    standby.wait_replayed(written)
    assert standby.psql("SELECT count(*) FROM t") == "2"

    # A crash: the postmaster and every backend gone, its pid file left behind; the start
    # after it recovers everything committed.
    postmaster = primary.pid
    assert postmaster is not None
    backends = psutil.Process(postmaster).children(recursive=True)
    assert backends
    primary.kill9()
    assert not psutil.pid_exists(postmaster)
    assert not any(b.is_running() and b.status() != psutil.STATUS_ZOMBIE for b in backends)
    assert (primary.data / "postmaster.pid").exists()
    primary.start()
    assert await primary.fetchval("SELECT count(*) FROM t") == 2
    primary.restart()
    assert primary.psql("SELECT count(*) FROM t") == "2"

    standby.promote()
    assert not standby.is_in_recovery()
    standby.psql("INSERT INTO t VALUES (3)")
    assert standby.psql("SELECT count(*) FROM t") == "3"
