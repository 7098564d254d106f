"""`stockroom serve` as a real process on a free port, talked to over TCP."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.servers import Server, cli_create_key, start_server


@pytest.fixture
def server(database_url: str, tmp_path: Path, client: httpx.AsyncClient) -> Iterator[Server]:
    # `client` is requested only so that the tables are emptied afterwards.
    running = start_server(database_url, tmp_path, "--workers", "2")
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()


async def test_serve_over_tcp_logs_json_and_stops_cleanly(
    server: Server, database_url: str, tmp_path: Path
) -> None:
    key = cli_create_key(database_url, tmp_path, "write")
    request_id = f"smoke-{uuid.uuid4().hex}"
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=10, headers=headers) as http:
        created = await http.post("/items", json={"sku": "TCP-1", "name": "Over TCP", "price": 3})
        assert created.status_code == 201, created.text
        fetched = await http.get(created.headers["location"], headers={"X-Request-ID": request_id})
        assert fetched.status_code == 200
        assert fetched.json()["sku"] == "TCP-1"
        assert fetched.headers["x-request-id"] == request_id
        assert (await http.get("/readyz")).json() == {"status": "ok", "database": "ok"}
        docs = await http.get("/docs")
        assert docs.status_code == 200

    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0

    lines = server.log_lines()  # every line is one JSON object, or json.loads fails here
    access = [
        line
        for line in lines
        if line.get("logger") == "stockroom.access" and line.get("request_id") == request_id
    ]
    assert len(access) == 1
    assert access[0]["method"] == "GET"
    assert access[0]["route"] == "/items/{item_id}"
    assert access[0]["status"] == 200
    assert isinstance(access[0]["duration_ms"], float)
    assert any(line.get("event") == "stopped" for line in lines)
