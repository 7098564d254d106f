"""Rate limits (STOCKROOM_RATE_LIMIT): per API key, per client address with auth off,
shared between instances through Redis, and never on the open endpoints."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.support.apps import client_for, create_key, make_settings, start_app
from tests.support.problems import problem
from tests.support.waiting import not_a_hang

REDIS_URL = "redis://127.0.0.1:6379/0"
LIMIT = 5
OPEN_PATHS = ("/ping", "/healthz", "/readyz", "/metrics", "/openapi.json")

AppFactory = Callable[..., AbstractAsyncContextManager[FastAPI]]


@pytest.fixture
def limited_app(database_url: str) -> AppFactory:
    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[FastAPI]:
        settings = make_settings(database_url, rate_limit=f"{LIMIT}/minute", **overrides)
        application, lifespan = await start_app(settings)
        try:
            yield application
        finally:
            await lifespan.__aexit__(None, None, None)

    return make


def assert_quota(response: httpx.Response, remaining: int) -> None:
    assert response.headers["ratelimit-limit"] == str(LIMIT)
    assert response.headers["ratelimit-remaining"] == str(remaining)
    assert 0 <= int(response.headers["ratelimit-reset"]) <= 60


async def test_each_key_has_its_own_budget(limited_app: AppFactory) -> None:
    async with limited_app() as application:
        first = await create_key(application, f"rl-{uuid.uuid4().hex[:8]}", ["read"])
        second = await create_key(application, f"rl-{uuid.uuid4().hex[:8]}", ["read"])
        async with client_for(application, first) as http:
            for n in range(LIMIT):
                # Errors of a limited route count and carry the headers too.
                response = await http.get("/items/999999" if n == 0 else "/items")
                assert response.status_code == (404 if n == 0 else 200)
                assert_quota(response, LIMIT - 1 - n)
            refused = await http.get("/items")
            body = problem(refused, 429)
            assert body["type"].endswith("too-many-requests")
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert_quota(refused, 0)
            for path in OPEN_PATHS:  # open endpoints: never limited, no headers
                for _ in range(LIMIT + 1):
                    response = await http.get(path)
                    assert response.status_code == 200, path
                assert "ratelimit-limit" not in response.headers
        async with client_for(application, second) as other:
            response = await other.get("/items")
            assert response.status_code == 200
            assert_quota(response, LIMIT - 1)


async def test_with_auth_off_each_address_has_its_own_budget(limited_app: AppFactory) -> None:
    async with limited_app(auth=False) as application:

        def from_address(host: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=application, client=(host, 40000))
            return httpx.AsyncClient(transport=transport, base_url="http://stockroom.test")

        suffix = uuid.uuid4().int % 250 + 1
        async with from_address(f"10.1.0.{suffix}") as one, from_address(f"10.2.0.{suffix}") as two:
            statuses = [(await one.get("/items")).status_code for _ in range(LIMIT + 1)]
            assert statuses == [200] * LIMIT + [429]
            assert (await two.get("/items")).status_code == 200


async def test_instances_share_the_budget_through_redis(limited_app: AppFactory) -> None:
    async with (
        limited_app(redis_url=REDIS_URL) as first,
        limited_app(redis_url=REDIS_URL) as second,
    ):
        key = await create_key(first, f"rl-{uuid.uuid4().hex[:8]}", ["read"])
        async with client_for(first, key) as one, client_for(second, key) as two:
            statuses = []
            for n in range(LIMIT + 2):
                response = await (one if n % 2 == 0 else two).get("/items")
                statuses.append(response.status_code)
            assert statuses == [200] * LIMIT + [429, 429]


async def test_redis_down_lets_requests_through(limited_app: AppFactory) -> None:
    async with limited_app(redis_url="redis://127.0.0.1:1/0") as application:
        key = await create_key(application, f"rl-{uuid.uuid4().hex[:8]}", ["read"])
        async with client_for(application, key) as http:
            for _ in range(LIMIT + 2):
                async with not_a_hang():  # each bounded by the 0.5 s store timeout
                    response = await http.get("/items")
                assert response.status_code == 200
                assert "ratelimit-limit" not in response.headers
