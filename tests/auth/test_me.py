"""`GET /me`: who is calling, for a client that shows only what the key may do (the console
hides write controls from a read key without probing the write endpoints)."""

from __future__ import annotations

import uuid

import httpx
from fastapi import FastAPI

from stockroom.auth import service
from tests.support.apps import client_for, create_key, make_settings, start_app
from tests.support.problems import problem


async def test_me_names_the_key_and_every_scope_it_grants(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    name = f"reader-{uuid.uuid4().hex[:8]}"
    async with client_for(app, await create_key(app, name, ["read"])) as reader:
        answer = await reader.get("/me")
    assert answer.status_code == 200
    assert answer.json() == {"name": name, "scopes": ["read"]}

    name = f"writer-{uuid.uuid4().hex[:8]}"
    async with client_for(app, await create_key(app, name, ["write"])) as writer:
        assert (await writer.get("/me")).json() == {"name": name, "scopes": ["read", "write"]}

    # The fixture's admin key: admin implies the others, listed in the one order.
    answer = await client.get("/me")
    assert answer.json()["scopes"] == ["read", "write", "admin"]
    assert answer.json()["name"].startswith("admin-")


async def test_me_refuses_a_missing_or_revoked_key_and_a_key_without_scopes(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    async with client_for(app) as anonymous:
        assert problem(await anonymous.get("/me"), 401)
    name = f"gone-{uuid.uuid4().hex[:8]}"
    key = await create_key(app, name, ["read"])
    async with client_for(app, key) as revoked:
        assert (await revoked.get("/me")).status_code == 200
        assert (await client.delete(f"/keys/{name}")).status_code == 204
        answer = await revoked.get("/me")
    assert answer.headers["www-authenticate"] == "Bearer"
    assert "revoked" in problem(answer, 401)["detail"]
    async with client_for(app, await create_key(app, f"none-{uuid.uuid4().hex[:8]}", [])) as bare:
        problem(await bare.get("/me"), 403)


async def test_with_authentication_off_me_has_no_name_and_every_scope(database_url: str) -> None:
    application, lifespan = await start_app(make_settings(database_url, auth=False))
    try:
        async with client_for(application) as http:
            answer = await http.get("/me")
    finally:
        await lifespan.__aexit__(None, None, None)
    assert answer.status_code == 200
    assert answer.json() == {"name": None, "scopes": list(service.SCOPES)}
