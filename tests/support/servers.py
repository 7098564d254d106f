"""`stockroom serve` (and `stockroom apikey create`) as real processes, as an operator runs
them: on a free port of 127.0.0.1, talked to over TCP, stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil

from tests.support.databases import PGBOUNCER_URLS

# Two test processes share PostgreSQL's 100 connections (see tests/conftest.py's docstring).
SERVER_POOL_SIZE = 10


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stockroom_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")}
    env.update(STOCKROOM_DATABASE_URL=database_url, STOCKROOM_LOG_LEVEL="info")
    if database_url in PGBOUNCER_URLS:
        env["STOCKROOM_DATABASE_PGBOUNCER"] = "true"
    return env


def cli_create_key(database_url: str, cwd: Path, scopes: str) -> str:
    """`stockroom apikey create`, as an operator runs it; returns the printed key."""
    result = subprocess.run(
        [sys.executable, "-m", "stockroom", "apikey", "create",
         "--name", f"cli-{uuid.uuid4().hex[:8]}", "--scopes", scopes],
        env=stockroom_env(database_url),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("sr_")
    return lines[0]


class Server:
    def __init__(self, process: subprocess.Popen[str], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def log_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as an orchestrator stops it; returns the exit status. A server that has
        not exited within ``timeout`` seconds fails the test, and is killed and reaped first
        (never left running to be reported by a later test)."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            tail = self.log.read_text()[-2000:]
            raise AssertionError(f"server did not stop within {timeout} s: {tail}") from None


def start_server(
    database_url: str,
    tmp_path: Path,
    *args: str,
    env_extra: dict[str, str] | None = None,
    port: int | None = None,
) -> Server:
    return start_servers(database_url, tmp_path, 1, *args, env_extra=env_extra, port=port)[0]


def start_servers(
    database_url: str,
    tmp_path: Path,
    count: int,
    *args: str,
    env_extra: dict[str, str] | None = None,
    port: int | None = None,
) -> list[Server]:
    """``count`` servers started at once (each on its own port; ``port`` only for one), once
    every one answers /healthz. One that fails to start fails the test, and all are reaped."""
    assert port is None or count == 1
    env = {
        **stockroom_env(database_url),
        "STOCKROOM_DATABASE_POOL_SIZE": str(SERVER_POOL_SIZE),
        **(env_extra or {}),
    }

    def launch(chosen: int) -> Server:
        log = tmp_path / f"server-{chosen}.log"
        with log.open("w") as sink:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(
                [sys.executable, "-m", "stockroom", "serve", "--port", str(chosen), *args],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=sink,
                text=True,
            )
        return Server(process, chosen, log)

    servers = [launch(port or free_port()) for _ in range(count)]
    deadline = time.monotonic() + 30
    waiting = list(servers)
    relaunches = 0
    try:
        while waiting and time.monotonic() < deadline:
            for server in list(waiting):
                if server.process.poll() is not None:
                    # Another test process took the free port first (two run at once): the
                    # server said so in one line and stopped; it gets another port.
                    told = server.log.read_text()
                    assert "address already in use" in told, told
                    assert port is None, told  # a port the test chose is not changed
                    assert relaunches < 3, told
                    relaunches += 1
                    again = launch(free_port())
                    servers[servers.index(server)] = again
                    waiting[waiting.index(server)] = again
                    continue
                try:
                    answered = httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200
                except httpx.TransportError:
                    answered = False
                # The answer must come from this server, not from another test process's
                # that holds the port (ours then stops: see above).
                if answered and _listens(server.process.pid, server.port):
                    waiting.remove(server)
            if waiting:
                time.sleep(0.1)
        if waiting:
            raise AssertionError(f"server did not start: {waiting[0].log.read_text()}")
    except BaseException:
        for server in servers:
            server.process.kill()
            server.process.wait()
        raise
    return servers


def _listens(pid: int, port: int) -> bool:
    """Whether the process ``pid`` (or one of its children: uvicorn's workers) listens on
    ``port``."""
    try:
        parent = psutil.Process(pid)
        processes = [parent, *parent.children(recursive=True)]
        return any(
            connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
            for process in processes
            for connection in process.net_connections(kind="tcp")
        )
    except psutil.NoSuchProcess:
        return False
