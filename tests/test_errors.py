"""Every error is problem+json with the request id, and nothing internal leaks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import client_for, make_settings, problem, start_app


async def test_unknown_route_is_404_problem(client: httpx.AsyncClient) -> None:
    body = problem(await client.get("/no/such/thing"), 404)
    assert body["type"].endswith("not-found")


async def test_wrong_method_is_405_with_every_allowed_method(client: httpx.AsyncClient) -> None:
    response = await client.put("/items")
    problem(response, 405)
    assert response.headers["allow"] == "GET, POST"
    response = await client.post("/items/1")
    problem(response, 405)
    assert response.headers["allow"] == "DELETE, GET, PATCH"


async def test_malformed_json_is_422_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/items", content=b'{"sku": "A", "name":', headers={"content-type": "application/json"}
    )
    body = problem(response, 422)
    assert body["errors"][0]["msg"] == "The body is not valid JSON."


async def test_validation_problem_lists_each_error(client: httpx.AsyncClient) -> None:
    response = await client.post("/items", json={"sku": "bad sku!", "price": "x"})
    body = problem(response, 422)
    locs = sorted(tuple(e["loc"]) for e in body["errors"])
    assert locs == [("body", "name"), ("body", "price"), ("body", "sku")]
    assert all(isinstance(e["msg"], str) and e["msg"] for e in body["errors"])
    assert "body.sku" in body["detail"]


async def test_oversized_body_is_413_by_content_length(client: httpx.AsyncClient) -> None:
    big = b'{"sku": "A", "name": "' + b"x" * 2_000_000 + b'", "price": 1}'
    body = problem(await client.post("/items", content=big), 413)
    assert body["type"].endswith("content-too-large")
    assert (await client.get("/items")).json()["data"] == []


async def test_oversized_streamed_body_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"sku": "A", "name": "'
        for _ in range(40):
            yield b"x" * 65_536
        yield b'", "price": 1}'

    response = await client.post(
        "/items", content=chunks(), headers={"content-type": "application/json"}
    )
    problem(response, 413)
    assert (await client.get("/items")).json()["data"] == []


@pytest.fixture
async def app_with_a_bug(database_url: str) -> AsyncIterator[FastAPI]:
    application, lifespan = await start_app(make_settings(database_url))

    async def explode() -> None:
        raise RuntimeError("secret internal detail: password=hunter2")

    application.add_api_route("/explode", explode, include_in_schema=False)
    try:
        yield application
    finally:
        await lifespan.__aexit__(None, None, None)


async def test_unexpected_error_is_500_problem_without_internals(
    app_with_a_bug: FastAPI,
) -> None:
    async with client_for(app_with_a_bug) as http:
        response = await http.get("/explode", headers={"X-Request-ID": "trace-me-1"})
    body = problem(response, 500)
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert body["type"].endswith("internal-error")
    assert response.headers["x-request-id"] == "trace-me-1"


async def test_request_id_is_echoed_when_sane(client: httpx.AsyncClient) -> None:
    for given in ("abc-123", "A.b_c-9", "x" * 128):
        response = await client.get("/ping", headers={"X-Request-ID": given})
        assert response.headers["x-request-id"] == given


@pytest.mark.parametrize("given", ["", "x" * 129, "has space", "semi;colon", "ünï", "a/b"])
async def test_insane_request_id_is_replaced(client: httpx.AsyncClient, given: str) -> None:
    response = await client.get("/ping", headers={"X-Request-ID": given.encode()})
    returned = response.headers["x-request-id"]
    assert returned != given
    assert 1 <= len(returned) <= 128


async def test_request_id_is_fresh_per_request_and_on_errors(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/ping")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5
    assert "x-request-id" in (await client.get("/nope")).headers
    big = b"x" * 2_000_000
    assert "x-request-id" in (await client.post("/items", content=big)).headers
