"""Export tokens (`POST /items/export/tokens`, `GET /items/export?token=`): a plain link
downloads the export; the token opens nothing else, expires, dies with its key, and is not
a stream token (nor a stream token one of them)."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import httpx
import orjson
from fastapi import FastAPI

from tests.support.apps import client_for, create_key, make_settings, start_app
from tests.support.items import ItemFactory
from tests.support.problems import problem
from tests.support.waiting import wait_until

# A request from a plain link: no Authorization header at all.
NO_KEY = {"Authorization": ""}


@contextlib.asynccontextmanager
async def other_instance(database_url: str, **overrides: object) -> AsyncIterator[FastAPI]:
    application, lifespan = await start_app(make_settings(database_url, **overrides))
    try:
        yield application
    finally:
        await lifespan.__aexit__(None, None, None)


async def export_token(http: httpx.AsyncClient) -> str:
    answer = await http.post("/items/export/tokens")
    assert answer.status_code == 201, answer.text
    token: str = answer.json()["token"]
    return token


async def download(http: httpx.AsyncClient, token: str, **params: str) -> httpx.Response:
    return await http.get("/items/export", params={"token": token, **params}, headers=NO_KEY)


async def test_a_plain_link_with_the_token_downloads_the_export(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    await new_item(sku="EXP-1", name="One", price="1.50", quantity=2)
    await new_item(sku="EXP-2", name="Two", price="3.00")
    key = await create_key(app, f"reader-{uuid.uuid4().hex[:8]}", ["read"])
    async with client_for(app, key) as reader, client_for(app) as anonymous:
        answer = await reader.post("/items/export/tokens")
        assert answer.status_code == 201
        body = answer.json()
        assert set(body) == {"token", "expires_at"}
        token = body["token"]
        assert token.startswith("et_")
        assert key not in token
        lifetime = dt.datetime.fromisoformat(body["expires_at"]) - dt.datetime.now(dt.UTC)
        assert dt.timedelta(minutes=4) < lifetime <= dt.timedelta(minutes=5)

        csv = await download(anonymous, token)
        assert csv.status_code == 200, csv.text
        assert csv.headers["content-disposition"].startswith("attachment;")
        lines = csv.text.splitlines()
        assert lines[0].startswith("id,sku,name")
        assert [line.split(",")[1] for line in lines[1:]] == ["EXP-1", "EXP-2"]
        # The list's filters and the format apply as with a key.
        ndjson = await download(anonymous, token, format="ndjson", q="two")
        assert [orjson.loads(line)["sku"] for line in ndjson.text.splitlines()] == ["EXP-2"]
        head = await anonymous.head("/items/export", params={"token": token}, headers=NO_KEY)
        assert head.status_code == 200
        assert head.content == b""
        # The token may be used again until it expires (a retried download).
        assert (await download(anonymous, token)).status_code == 200


async def test_the_token_opens_nothing_else(app: FastAPI, client: httpx.AsyncClient) -> None:
    key = await create_key(app, f"reader-{uuid.uuid4().hex[:8]}", ["read"])
    async with client_for(app, key) as reader, client_for(app) as anonymous:
        token = await export_token(reader)
        for method, path in (
            ("GET", "/items"),
            ("GET", "/events"),
            ("POST", "/items/export/tokens"),
            ("POST", "/events/tokens"),
        ):
            elsewhere = await anonymous.request(
                method, path, params={"token": token}, headers=NO_KEY
            )
            assert "opens only GET /items/export" in problem(elsewhere, 401)["detail"]
        # Even beside a good key, and never as a Bearer key, the export included.
        beside = await reader.get("/items", params={"token": token})
        assert "opens only GET /items/export" in problem(beside, 401)["detail"]
        for path in ("/items/export", "/items"):
            bearer = await anonymous.get(path, headers={"Authorization": f"Bearer {token}"})
            assert "not an API key" in problem(bearer, 401)["detail"]
        # An altered token is refused.
        altered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        refused = problem(await download(anonymous, altered), 401)
        assert "not valid" in refused["detail"]

    # A key without `read` gets no token (403), and no key none at all (401).
    nothing = await create_key(app, f"none-{uuid.uuid4().hex[:8]}", [])
    async with client_for(app, nothing) as powerless, client_for(app) as anonymous:
        problem(await powerless.post("/items/export/tokens"), 403)
        problem(await anonymous.post("/items/export/tokens"), 401)


async def test_a_stream_token_does_not_open_the_export_nor_an_export_token_the_stream(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    key = await create_key(app, f"reader-{uuid.uuid4().hex[:8]}", ["read"])
    async with client_for(app, key) as reader, client_for(app) as anonymous:
        stream_token = (await reader.post("/events/tokens")).json()["token"]
        refused = problem(await download(anonymous, stream_token), 401)
        assert "opens only GET /events" in refused["detail"]
        # Given the export token's prefix, the stream token's signature still fails: the
        # two kinds are signed with different keys.
        disguised = "et_" + stream_token.removeprefix("st_")
        assert "not valid" in problem(await download(anonymous, disguised), 401)["detail"]
        export = await export_token(reader)
        opened = await anonymous.head("/events", params={"token": export}, headers=NO_KEY)
        assert opened.status_code == 401
        as_stream = "st_" + export.removeprefix("et_")
        again = await anonymous.head("/events", params={"token": as_stream}, headers=NO_KEY)
        assert again.status_code == 401
        # The stream token itself still opens the stream.
        stream = await anonymous.head("/events", params={"token": stream_token}, headers=NO_KEY)
        assert stream.status_code == 200


async def test_the_token_expires(client: httpx.AsyncClient, database_url: str) -> None:
    async with other_instance(database_url, export_token_seconds=1) as brief:
        key = await create_key(brief, f"brief-{uuid.uuid4().hex[:8]}", ["read"])
        async with client_for(brief, key) as http:
            token = await export_token(http)

            async def expired() -> bool:
                return (await download(http, token)).status_code == 401

            await wait_until(expired, within=5)
            assert "expired" in problem(await download(http, token), 401)["detail"]


async def test_the_token_dies_with_its_key(app: FastAPI, client: httpx.AsyncClient) -> None:
    name = f"revoked-{uuid.uuid4().hex[:8]}"
    key = await create_key(app, name, ["read"])
    async with client_for(app, key) as reader, client_for(app) as anonymous:
        token = await export_token(reader)
        assert (await download(anonymous, token)).status_code == 200  # the key is now cached
        assert (await client.delete(f"/keys/{name}")).status_code == 204
        refused = problem(await download(anonymous, token), 401)
        assert "revoked" in refused["detail"]


def test_the_document_declares_the_tokens(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    create = paths["/items/export/tokens"]["post"]
    assert create["operationId"] == "createExportToken"
    assert set(create["responses"]) >= {"201", "401", "403"}
    export = paths["/items/export"]["get"]
    assert "token" in {p["name"] for p in export["parameters"] if p["in"] == "query"}
