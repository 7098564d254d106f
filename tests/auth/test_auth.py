"""API keys and scopes. The route checks are generated from the OpenAPI schema, so a new
route cannot forget its authentication."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from stockroom.auth.models import ApiKey
from stockroom.auth.service import Authenticator
from tests.support.apps import client_for, create_key, make_settings, start_app
from tests.support.problems import problem
from tests.support.servers import start_server

OPEN = {"/ping", "/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json"}
BELOW = {"read": [], "write": ["read"], "admin": ["write"]}


def required_scope(path: str, method: str) -> str:
    """The contract's rule: keys and webhooks need admin, reading needs read, writing needs
    write."""
    if path.startswith(("/keys", "/webhooks")):
        return "admin"
    if path in ("/events/tokens", "/items/export/tokens"):  # credentials to read with
        return "read"
    return "read" if method == "get" else "write"


async def operations(client: httpx.AsyncClient) -> list[tuple[str, str, str]]:
    schema = (await client.get("/openapi.json")).json()
    found = []
    for path, methods in schema["paths"].items():
        for method in methods:
            concrete = path.replace("{item_id}", "1").replace("{name}", "nobody")
            concrete = concrete.replace("{webhook_id}", "nobody")
            if path == "/events":  # a stream that never ends; a made-up cursor ends it (410)
                concrete += "?after=0-0"
            found.append((path, method, concrete))
    return found


async def test_open_endpoints_need_no_key(app: FastAPI) -> None:
    async with client_for(app) as anonymous:
        for path in OPEN:
            assert (await anonymous.get(path)).status_code == 200, path


async def test_every_other_route_needs_a_key_with_its_scope(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    ops = await operations(client)
    guarded = [op for op in ops if op[0] not in OPEN]
    assert len(guarded) >= 8  # items, adjustments and keys are all in the schema
    keys = {
        "none": await create_key(app, "scopes-none", []),
        "read": await create_key(app, "scopes-read", ["read"]),
        "write": await create_key(app, "scopes-write", ["write"]),
        "admin": await create_key(app, "scopes-admin", ["admin"]),
    }
    for path, method, url in guarded:
        scope = required_scope(path, method)
        body: Any = {} if method in ("post", "patch") else None

        async def call(
            key: str | None, *, method: str = method, url: str = url, body: Any = body
        ) -> httpx.Response:
            async with client_for(app, key) as http:
                return await http.request(method.upper(), url, json=body)

        for key in (None, "sr_unknown", "Basic-not-bearer"):
            response = await call(key)
            problem(response, 401)
            assert response.headers["www-authenticate"] == "Bearer", (method, path)
        for weaker in ["none", *BELOW[scope]]:
            problem(await call(keys[weaker]), 403)
        allowed = await call(keys[scope])
        assert allowed.status_code not in (401, 403), (method, path, allowed.text)


async def test_the_key_is_checked_before_the_body_is_read(app: FastAPI) -> None:
    """An unauthenticated (or under-scoped) write is refused whatever its body: the body of
    a caller without a key is never parsed (docs/api.md, Errors)."""
    reader = await create_key(app, "body-reader", ["read"])
    writes = [("POST", "/items"), ("PATCH", "/items/1"), ("POST", "/items/1/adjustments")]
    for method, url in writes:
        for key, status in ((None, 401), ("sr_unknown", 401), (reader, 403)):
            async with client_for(app, key) as http:
                response = await http.request(
                    method, url, content=b'{"not json', headers={"Content-Type": "application/json"}
                )
            problem(response, status)
            # Answered before the body was read: the connection is not reused.
            assert response.headers["connection"] == "close", (method, url, key)


async def test_a_non_bearer_authorization_is_401(app: FastAPI, admin_key: str) -> None:
    async with client_for(app) as http:
        response = await http.get("/items", headers={"Authorization": f"Basic {admin_key}"})
    problem(response, 401)


async def test_keys_over_http(app: FastAPI, client: httpx.AsyncClient) -> None:
    created = await client.post("/keys", json={"name": "ci", "scopes": ["read", "write"]})
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {"name", "scopes", "key", "created_at"}
    assert body["scopes"] == ["read", "write"]
    secret = body["key"]
    assert secret.startswith("sr_")
    assert len(secret) >= 3 + 22  # at least 128 bits in URL-safe base64

    listed = await client.get("/keys")
    assert secret not in listed.text
    assert "ci" in [k["name"] for k in listed.json()["data"]]

    problem(await client.post("/keys", json={"name": "ci", "scopes": ["read"]}), 409)
    problem(await client.post("/keys", json={"name": "x", "scopes": ["superuser"]}), 422)

    async with client_for(app, secret) as ci:
        assert (await ci.get("/items")).status_code == 200
        assert (await client.delete("/keys/ci")).status_code == 204
        problem(await ci.get("/items"), 401)  # this instance forgets it at once
    assert (await client.delete("/keys/ci")).status_code == 204  # again is fine
    problem(await client.delete("/keys/nobody"), 404)
    revoked = [k for k in (await client.get("/keys")).json()["data"] if k["name"] == "ci"]
    assert revoked[0]["revoked_at"] is not None


async def test_keys_are_stored_only_as_hashes(app: FastAPI) -> None:
    secret = await create_key(app, "hashed", ["read"])
    async with app.state.resources.sessions() as session:
        record = await session.scalar(select(ApiKey).where(ApiKey.name == "hashed"))
    assert record is not None
    assert secret not in (record.key_hash, record.scopes, record.name)
    assert record.key_hash == hashlib.sha256(secret.encode()).hexdigest()


async def test_verification_compares_in_constant_time(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    application, lifespan = await start_app(make_settings(database_url, auth_cache_seconds=0))
    try:
        secret = await create_key(application, "timing", ["read"])
        async with client_for(application, secret) as http:
            assert (await http.get("/items")).status_code == 200
    finally:
        await lifespan.__aexit__(None, None, None)
    assert calls
    assert calls[-1][0] == calls[-1][1] == hashlib.sha256(secret.encode()).hexdigest()


CACHE_SECONDS = 60.0


class Clock:
    """A monotonic clock that a test moves on instead of sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


@pytest.fixture
async def second_instance(database_url: str) -> AsyncIterator[tuple[FastAPI, Clock]]:
    """Another instance on the same database, its key cache on a clock the test moves."""
    settings = make_settings(database_url, auth_cache_seconds=CACHE_SECONDS)
    application, lifespan = await start_app(settings)
    clock = Clock()
    resources = application.state.resources
    application.state.resources = dataclasses.replace(
        resources,
        authenticator=Authenticator(
            resources.sessions, enabled=True, ttl=CACHE_SECONDS, clock=clock
        ),
    )
    try:
        yield application, clock
    finally:
        await lifespan.__aexit__(None, None, None)


async def test_revocation_reaches_other_instances_within_the_cache_time(
    app: FastAPI, client: httpx.AsyncClient, second_instance: tuple[FastAPI, Clock]
) -> None:
    elsewhere_app, clock = second_instance
    secret = await create_key(app, "short-lived", ["read"])
    async with client_for(elsewhere_app, secret) as elsewhere:
        assert (await elsewhere.get("/items")).status_code == 200  # now cached there
        assert (await client.delete("/keys/short-lived")).status_code == 204
        clock.offset = CACHE_SECONDS - 1
        assert (await elsewhere.get("/items")).status_code == 200  # still trusted, cached
        clock.offset = CACHE_SECONDS + 0.01
        problem(await elsewhere.get("/items"), 401)


async def test_auth_off_opens_everything_with_a_loud_warning(
    database_url: str, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    server = start_server(database_url, tmp_path, env_extra={"STOCKROOM_AUTH": "off"})
    try:
        async with httpx.AsyncClient(base_url=server.url) as anonymous:
            response = await anonymous.post("/items", json={"sku": "OPEN", "name": "o", "price": 1})
            assert response.status_code == 201
            assert (await anonymous.get("/keys")).status_code == 200
    finally:
        server.stop()
    warnings = [
        line for line in server.log_lines()
        if line.get("level") == "warning" and "AUTHENTICATION IS OFF" in str(line.get("event"))
    ]  # fmt: skip
    assert warnings
