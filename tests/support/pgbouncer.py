"""A real PgBouncer in transaction mode, in front of the test PostgreSQL.

`make test` installs Debian's `pgbouncer` package when it is missing; tests never install
anything. Without the binary the PgBouncer runs are skipped, except in CI where that is a
failure.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.support.servers import free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
# PgBouncer refuses to run as root; as root it is started as this user.
RUN_AS = "postgres"


@dataclass
class PgBouncer:
    process: subprocess.Popen[bytes]
    port: int
    folder: Path
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_pgbouncer(admin_url: str, *, in_ci: bool) -> PgBouncer:
    """Start PgBouncer (pool_mode = transaction) for every database of ``admin_url``'s
    server, on a free port; returns once it accepts connections."""
    if not os.access(PGBOUNCER, os.X_OK):
        message = "pgbouncer is not installed (make test installs it)"
        if in_ci:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    upstream = make_url(admin_url)
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="stockroom-pgbouncer-"))
    folder.chmod(0o755)  # readable by the user PgBouncer runs as
    log = folder / "pgbouncer.log"
    users = folder / "users.txt"
    users.write_text(f'"{upstream.username or "postgres"}" ""\n')
    config = folder / "pgbouncer.ini"
    # 10 server connections: two test processes, each with its PgBouncer, share PostgreSQL's
    # 100 (tests/conftest.py); more clients than that wait in PgBouncer's queue.
    config.write_text(
        "[databases]\n"
        f"* = host={upstream.host or '127.0.0.1'} port={upstream.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"unix_socket_dir =\nauth_type = trust\nauth_file = {users}\n"
        "pool_mode = transaction\n"
        "default_pool_size = 10\nmax_client_conn = 500\n"
        "ignore_startup_parameters = extra_float_digits\n"
        f"logfile = {log}\n"
    )
    for path in (users, config):
        path.chmod(0o644)
    command = [PGBOUNCER, str(config)]
    if os.geteuid() == 0:
        os.chown(folder, *_ids(RUN_AS))
        command[1:1] = ["-u", RUN_AS]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited: {log.read_text() if log.exists() else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return PgBouncer(process, port, folder, log)
        except OSError:
            time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError("pgbouncer did not start")


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid
