"""CORS: off by default; with STOCKROOM_CORS_ORIGINS, preflights answered without a key and
every answer to an allowed origin, errors included, readable by the page."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.support.apps import client_for, create_key, make_settings, start_app
from tests.support.problems import problem
from tests.support.servers import stockroom_env

PAGE = "http://127.0.0.1:5173"
OTHER = "https://app.example.com"
EXPOSED = {
    "etag",
    "location",
    "x-request-id",
    "idempotent-replayed",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "retry-after",
    "consistency-token",
}
REQUESTED = (
    "authorization, content-type, idempotency-key, if-match, if-none-match, last-event-id, "
    "consistency-token"
)


@pytest.fixture(scope="module")
async def cors_app(database_url: str) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        database_url, cors_origins=f"{PAGE}, {OTHER}", rate_limit="3/minute", max_body_bytes=2048
    )
    application, lifespan = await start_app(settings)
    try:
        yield application
    finally:
        await lifespan.__aexit__(None, None, None)


def exposed(response: httpx.Response) -> set[str]:
    value = response.headers.get("access-control-expose-headers", "")
    return {part.strip().lower() for part in value.split(",") if part.strip()}


def readable_by(response: httpx.Response, origin: str) -> bool:
    allowed: str | None = response.headers.get("access-control-allow-origin")
    return allowed == origin


async def test_no_cors_headers_by_default(client: httpx.AsyncClient) -> None:
    answer = await client.get("/items", headers={"Origin": PAGE})
    assert answer.status_code == 200
    assert not [name for name in answer.headers if name.startswith("access-control-")]
    preflight = await client.options(
        "/items", headers={"Origin": PAGE, "Access-Control-Request-Method": "POST"}
    )
    problem(preflight, 405)
    assert "access-control-allow-origin" not in preflight.headers


async def test_a_preflight_needs_no_key_and_allows_the_api(cors_app: FastAPI) -> None:
    async with client_for(cors_app) as http:  # no key at all
        for path, method in (("/items", "POST"), ("/items/1", "PATCH"), ("/events", "GET")):
            preflight = await http.options(
                path,
                headers={
                    "Origin": PAGE,
                    "Access-Control-Request-Method": method,
                    "Access-Control-Request-Headers": REQUESTED,
                },
            )
            assert preflight.status_code == 200, preflight.text
            assert readable_by(preflight, PAGE)
            methods = {
                m.strip() for m in preflight.headers["access-control-allow-methods"].split(",")
            }
            assert methods == {"DELETE", "GET", "HEAD", "PATCH", "POST"}
            allowed = {
                h.strip().lower()
                for h in preflight.headers["access-control-allow-headers"].split(",")
            }
            assert {h.strip() for h in REQUESTED.split(",")} <= allowed
            assert "origin" in preflight.headers["vary"].lower()


async def test_a_refused_preflight_is_a_problem(cors_app: FastAPI) -> None:
    async with client_for(cors_app) as http:
        foreign = await http.options(
            "/items",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        body = problem(foreign, 400)
        assert "origin" in body["detail"]
        assert "access-control-allow-origin" not in foreign.headers
        header = await http.options(
            "/items",
            headers={
                "Origin": PAGE,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-secret-thing",
            },
        )
        assert "headers" in problem(header, 400)["detail"]
        # Without Access-Control-Request-Method it is no preflight: the API's own 405.
        plain = await http.options("/items", headers={"Origin": PAGE})
        problem(plain, 405)
        assert readable_by(plain, PAGE)


async def test_answers_and_errors_are_readable_by_an_allowed_origin(cors_app: FastAPI) -> None:
    key = await create_key(cors_app, f"cors-{uuid.uuid4().hex[:8]}", ["write"])
    async with client_for(cors_app, key) as http:
        origin = {"Origin": OTHER}
        created = await http.post(
            "/items",
            json={"sku": f"CORS-{uuid.uuid4().hex[:6]}", "name": "C", "price": 1},
            headers=origin,
        )
        assert created.status_code == 201
        assert readable_by(created, OTHER)
        assert exposed(created) >= EXPOSED
        assert "origin" in created.headers["vary"].lower()

        invalid = await http.post("/items", json={"sku": ""}, headers=origin)
        problem(invalid, 422)
        too_large = await http.post(
            "/items",
            content=b"{" + b" " * 4096 + b"}",
            headers={**origin, "Content-Type": "application/json"},
        )
        problem(too_large, 413)
        missing = await http.get("/items/2000000000", headers=origin)
        problem(missing, 404)
        for answer in (invalid, too_large, missing):
            assert readable_by(answer, OTHER), answer.status_code
            assert exposed(answer) >= EXPOSED

        for _ in range(5):  # the budget is 3 a minute
            over = await http.get("/items", headers=origin)
            if over.status_code == 429:
                break
        problem(over, 429)
        assert readable_by(over, OTHER)
        assert {"retry-after", "ratelimit-remaining"} <= exposed(over)
        assert over.headers["retry-after"]

        # A request from an origin that is not listed gets no permission to read.
        elsewhere = await http.get("/ping", headers={"Origin": "https://evil.example"})
        assert elsewhere.status_code == 200
        assert "access-control-allow-origin" not in elsewhere.headers

    async with client_for(cors_app) as anonymous:
        unauthorized = await anonymous.get("/items", headers={"Origin": PAGE})
        problem(unauthorized, 401)
        assert readable_by(unauthorized, PAGE)
        assert unauthorized.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "value",
    [
        "https://app.example.com/",
        "app.example.com",
        "https://App.example.com",
        "*, https://a.example",
    ],
)
def test_a_bad_origin_stops_start_up_with_one_line(value: str, tmp_path: Path) -> None:
    # Once, not per backend: the settings are read before any database work (the SQLite
    # file named here is never made).
    database = tmp_path / "never.db"
    env = {
        **stockroom_env(f"sqlite+aiosqlite:///{database}"),
        "STOCKROOM_CORS_ORIGINS": f"http://127.0.0.1:8080,{value}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "stockroom", "serve", "--port", "0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert not database.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "STOCKROOM_CORS_ORIGINS" in lines[0]
    assert repr(value.split(",")[0].strip()) in lines[0]
