"""Stream tokens (`POST /events/tokens`, `GET /events?token=`): what they open, what they do
not, expiry, revocation, and other instances. Whether a token opens the stream is asked with
HEAD, which runs the GET's checks without holding a stream open (in-process); the stream
itself over TCP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import struct
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
from fastapi import FastAPI

from tests.support.apps import client_for, create_key, make_settings, start_app
from tests.support.problems import problem
from tests.support.servers import start_servers
from tests.support.waiting import wait_until

FAST = {"STOCKROOM_EVENTS_POLL_SECONDS": "0.05", "STOCKROOM_EVENTS_HEARTBEAT_SECONDS": "1"}


@contextlib.asynccontextmanager
async def other_instance(database_url: str, **overrides: object) -> AsyncIterator[FastAPI]:
    application, lifespan = await start_app(make_settings(database_url, **overrides))
    try:
        yield application
    finally:
        await lifespan.__aexit__(None, None, None)


async def new_token(http: httpx.AsyncClient) -> str:
    answer = await http.post("/events/tokens")
    assert answer.status_code == 201, answer.text
    token: str = answer.json()["token"]
    return token


async def opens(http: httpx.AsyncClient, token: str) -> httpx.Response:
    """HEAD /events?token=... with no Authorization header."""
    return await http.head("/events", params={"token": token}, headers={"Authorization": ""})


async def test_a_token_opens_the_stream_and_nothing_else(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    name = f"reader-{uuid.uuid4().hex[:8]}"
    key = await create_key(app, name, ["read"])
    async with client_for(app, key) as reader, client_for(app) as anonymous:
        answer = await reader.post("/events/tokens")
        assert answer.status_code == 201
        body = answer.json()
        assert set(body) == {"token", "expires_at"}
        token = body["token"]
        assert key not in token
        assert not token.startswith("sr_")
        expires = dt.datetime.fromisoformat(body["expires_at"])
        lifetime = expires - dt.datetime.now(dt.UTC)
        assert dt.timedelta(minutes=59) < lifetime <= dt.timedelta(hours=1)

        assert (await opens(anonymous, token)).status_code == 200
        # Not an API key: as a Bearer key it opens nothing, the stream included.
        for path in ("/events", "/items", "/events/tokens"):
            method = "POST" if path == "/events/tokens" else "GET"
            bearer = await anonymous.request(
                method, path, headers={"Authorization": f"Bearer {token}"}
            )
            assert "not an API key" in problem(bearer, 401)["detail"]
        # ?token= on any other route is refused, even beside a good key.
        for method, path in (("GET", "/items"), ("POST", "/events/tokens"), ("GET", "/keys")):
            elsewhere = await reader.request(method, path, params={"token": token})
            assert "opens only GET /events" in problem(elsewhere, 401)["detail"]
        # A forged or altered token is refused, whatever key id it names.
        mac = token.rsplit(".", 1)[1]
        forged = [
            "st_"
            + base64.urlsafe_b64encode(struct.pack(">QQ", key_id, 4102444800)).decode().rstrip("=")
            + "."
            + mac
            for key_id in (0, 2, 2**31, 2**63 + 5)
        ]
        altered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        for bad in (altered, *forged, "st_x.y", "st_", key):
            refused = await opens(anonymous, bad)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"

    # A key without `read` gets no token (403), and no key none at all (401).
    nothing = await create_key(app, f"none-{uuid.uuid4().hex[:8]}", [])
    async with client_for(app, nothing) as powerless, client_for(app) as anonymous:
        problem(await powerless.post("/events/tokens"), 403)
        problem(await anonymous.post("/events/tokens"), 401)


async def test_a_token_dies_with_its_key_here_at_once_and_elsewhere_within_the_cache_time(
    app: FastAPI, client: httpx.AsyncClient, database_url: str
) -> None:
    name = f"revoked-{uuid.uuid4().hex[:8]}"
    key = await create_key(app, name, ["read"])
    async with (
        other_instance(database_url, auth_cache_seconds=0.3) as second,
        client_for(app, key) as here,
        client_for(second) as there,
    ):
        token = await new_token(here)
        assert (await opens(here, token)).status_code == 200
        assert (await opens(there, token)).status_code == 200  # verified by another instance
        assert (await client.delete(f"/keys/{name}")).status_code == 204
        assert (await opens(here, token)).status_code == 401  # at once where it was revoked

        async def refused_there() -> bool:
            return (await opens(there, token)).status_code == 401

        await wait_until(refused_there)


async def test_a_token_expires(app: FastAPI, client: httpx.AsyncClient, database_url: str) -> None:
    key = await create_key(app, f"brief-{uuid.uuid4().hex[:8]}", ["read"])
    # 3 s: long enough to open the stream first on a loaded machine, short to wait out.
    async with other_instance(database_url, events_token_seconds=3) as brief:
        async with client_for(brief, key) as http:
            token = await new_token(http)
            assert (await opens(http, token)).status_code == 200

            async def expired() -> bool:
                return (await opens(http, token)).status_code == 401

            await wait_until(expired)
            answer = await http.get(
                "/events", params={"token": token}, headers={"Authorization": ""}
            )
            assert "expired" in problem(answer, 401)["detail"]
        # Another instance agrees: the expiry is in the token, not in a process's memory.
        async with client_for(app) as elsewhere:
            assert (await opens(elsewhere, token)).status_code == 401


async def test_with_authentication_off_a_page_still_gets_a_token(database_url: str) -> None:
    async with other_instance(database_url, auth=False) as open_app, client_for(open_app) as http:
        token = await new_token(http)
        assert (await opens(http, token)).status_code == 200


async def read_events(
    url: str, messages: list[dict[str, object]], opened: asyncio.Event, ended: asyncio.Event
) -> int:
    """Read `GET url` (no Authorization header) as a stream of messages, until it ends;
    ``opened`` is set when its headers have come (the server subscribes right after)."""
    async with httpx.AsyncClient(timeout=30) as http, http.stream("GET", url) as response:
        opened.set()
        if response.status_code != 200:
            ended.set()
            return response.status_code
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "" and fields:
                messages.append({"id": fields["id"], **orjson.loads(fields["data"])})
                fields = {}
            elif line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
    ended.set()
    return 200


async def test_over_tcp_a_token_streams_ends_at_expiry_and_stays_out_of_the_logs(
    app: FastAPI, database_url: str, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    env = {**FAST, "STOCKROOM_EVENTS_TOKEN_SECONDS": "4"}
    first, second = start_servers(database_url, tmp_path, 2, env_extra=env)
    try:
        # Made in this process (`stockroom apikey create` is tested in tests/auth/test_cli.py).
        key = await create_key(app, f"tcp-{uuid.uuid4().hex[:8]}", ["write"])
        auth = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=first.url, headers=auth, timeout=10) as http:
            token = await new_token(http)
            messages: list[dict[str, object]] = []
            opened, ended = asyncio.Event(), asyncio.Event()
            # Issued by the first instance, streamed from the second.
            reader = asyncio.create_task(
                read_events(f"{second.url}/events?token={token}", messages, opened, ended)
            )
            await asyncio.wait_for(opened.wait(), 20)
            created = await http.post("/items", json={"sku": "TOK-1", "name": "T", "price": 1})
            assert created.status_code == 201
            await wait_until(lambda: len(messages) >= 1)
            assert messages[0]["type"] == "item.created"
            # The stream ends by itself when the token expires.
            await asyncio.wait_for(ended.wait(), 20)
            assert await reader == 200
    finally:
        for server in (first, second):
            server.stop()
    for server in (first, second):
        text = server.log.read_text()
        assert token not in text
        assert key not in text
    streamed = [
        line
        for line in second.log_lines()
        if line.get("logger") == "stockroom.access" and line.get("route") == "/events"
    ]
    assert streamed
    assert {line["status"] for line in streamed} == {200}
