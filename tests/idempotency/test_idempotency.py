"""Idempotency-Key: a retry gets the first answer and applies nothing again."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select, update

from stockroom.idempotency.models import IdempotencyRecord
from stockroom.idempotency.service import purge_expired
from tests.support.apps import client_for, create_key, make_settings, start_app
from tests.support.items import ItemFactory
from tests.support.problems import problem


async def stock(client: httpx.AsyncClient, item_id: int) -> int:
    quantity: int = (await client.get(f"/items/{item_id}")).json()["quantity"]
    return quantity


async def test_replay_returns_the_first_answer_byte_for_byte(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=10)
    url = f"/items/{item['id']}/adjustments"
    headers = {"Idempotency-Key": "order-1001"}
    first = await client.post(url, json={"delta": -3, "reason": "order"}, headers=headers)
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    second = await client.post(url, json={"reason": "order", "delta": -3}, headers=headers)
    assert second.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert await stock(client, item["id"]) == 7


async def test_replayed_item_creation_keeps_its_headers(client: httpx.AsyncClient) -> None:
    body = {"sku": "IDEM-1", "name": "Once", "price": "1.00", "quantity": 2}
    headers = {"Idempotency-Key": "create-IDEM-1"}
    first = await client.post("/items", json=body, headers=headers)
    second = await client.post("/items", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second.headers["location"] == first.headers["location"]
    assert second.headers["etag"] == first.headers["etag"]
    assert second.headers["content-type"] == "application/json"
    assert len((await client.get("/items")).json()["data"]) == 1


async def test_same_key_with_another_body_is_422(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=10)
    url = f"/items/{item['id']}/adjustments"
    headers = {"Idempotency-Key": "k-1"}
    assert (await client.post(url, json={"delta": 1}, headers=headers)).status_code == 201
    body = problem(await client.post(url, json={"delta": 2}, headers=headers), 422)
    assert body["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    # ... and on another path.
    other = await new_item(quantity=1)
    problem(
        await client.post(f"/items/{other['id']}/adjustments", json={"delta": 1}, headers=headers),
        422,
    )
    assert await stock(client, item["id"]) == 11
    assert await stock(client, other["id"]) == 1


async def test_concurrent_duplicates_apply_exactly_once(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=100)
    url = f"/items/{item['id']}/adjustments"
    headers = {"Idempotency-Key": "burst"}
    responses = await asyncio.gather(
        *(client.post(url, json={"delta": -1}, headers=headers) for _ in range(20))
    )
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {201, 409}
    assert 409 in statuses  # the duplicates that arrived while the first was in flight
    for response in responses:
        if response.status_code == 409:
            body = problem(response, 409)
            assert body["type"].endswith("idempotency-key-in-use")
    first = [
        r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers
    ]
    assert len(first) == 1
    assert await stock(client, item["id"]) == 99
    # After the first finished, a retry replays it.
    retry = await client.post(url, json={"delta": -1}, headers=headers)
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first[0].content


async def test_keys_are_scoped_per_api_key(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=10)
    url = f"/items/{item['id']}/adjustments"
    headers = {"Idempotency-Key": "shared-name"}
    other_key = await create_key(app, "idem-other", ["write"])
    async with client_for(app, other_key) as other:
        a = await client.post(url, json={"delta": -1}, headers=headers)
        b = await other.post(url, json={"delta": -1}, headers=headers)
    assert a.status_code == b.status_code == 201
    assert "idempotent-replayed" not in b.headers
    assert await stock(client, item["id"]) == 8


async def test_a_failed_request_is_not_stored(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=1)
    url = f"/items/{item['id']}/adjustments"
    headers = {"Idempotency-Key": "retry-after-restock"}
    problem(await client.post(url, json={"delta": -2}, headers=headers), 409)
    await client.post(url, json={"delta": 5})
    retried = await client.post(url, json={"delta": -2}, headers=headers)
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    assert await stock(client, item["id"]) == 4


async def test_records_expire_after_24_hours(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=10)
    url = f"/items/{item['id']}/adjustments"
    headers = {"Idempotency-Key": "old"}
    await client.post(url, json={"delta": -1}, headers=headers)
    record = await _record(app, "old")
    assert record.expires_at - record.created_at == dt.timedelta(hours=24)

    await _age(app, "old", dt.timedelta(hours=24, seconds=1))
    again = await client.post(url, json={"delta": -1}, headers=headers)
    assert again.status_code == 201
    assert "idempotent-replayed" not in again.headers
    assert await stock(client, item["id"]) == 8


async def test_cleanup_deletes_only_expired_records(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=10)
    url = f"/items/{item['id']}/adjustments"
    for n in range(5):
        await client.post(url, json={"delta": -1}, headers={"Idempotency-Key": f"k{n}"})
    for n in range(3):
        await _age(app, f"k{n}", dt.timedelta(hours=25))
    async with app.state.resources.sessions() as session:
        assert await purge_expired(session, batch=2) == 2
    async with app.state.resources.sessions() as session:
        assert await purge_expired(session) == 1
        assert await purge_expired(session) == 0
        left = await session.scalar(select(func.count()).select_from(IdempotencyRecord))
    assert left == 2


async def test_bad_idempotency_key_is_422(client: httpx.AsyncClient, new_item: ItemFactory) -> None:
    item = await new_item(quantity=1)
    url = f"/items/{item['id']}/adjustments"
    for key in ("", "x" * 256, "tab\there", "ünicode"):
        response = await client.post(
            url, json={"delta": 1}, headers={b"Idempotency-Key": key.encode()}
        )
        problem(response, 422)
    assert await stock(client, item["id"]) == 1


async def _record(app: FastAPI, key: str) -> IdempotencyRecord:
    async with app.state.resources.sessions() as session:
        record: IdempotencyRecord | None = await session.scalar(
            select(IdempotencyRecord).where(IdempotencyRecord.key == key)
        )
        assert record is not None
        return record


async def _age(app: FastAPI, key: str, by: dt.timedelta) -> None:
    """Move a record back in time, as if it had been stored ``by`` ago."""
    record = await _record(app, key)
    async with app.state.resources.sessions() as session:
        await session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key == key)
            .values(created_at=record.created_at - by, expires_at=record.expires_at - by)
        )
        await session.commit()


async def test_duplicates_across_instances_apply_exactly_once(
    app: FastAPI,
    database_url: str,
    admin_key: str,
    client: httpx.AsyncClient,
    new_item: ItemFactory,
) -> None:
    """Two instances on one database (each with its own in-process guard): PostgreSQL's
    advisory lock answers 409 at once; SQLite runs one writer at a time, so the later
    duplicate waits and then replays."""
    other, lifespan = await start_app(make_settings(database_url))
    try:
        item = await new_item(quantity=50)
        url = f"/items/{item['id']}/adjustments"
        headers = {"Idempotency-Key": "two-instances"}
        async with client_for(other, admin_key) as there:
            responses = await asyncio.gather(
                *(
                    (client if n % 2 else there).post(url, json={"delta": -2}, headers=headers)
                    for n in range(16)
                )
            )
    finally:
        await lifespan.__aexit__(None, None, None)
    assert {r.status_code for r in responses} <= {201, 409}
    originals = [
        r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers
    ]
    assert len(originals) == 1
    assert await stock(client, item["id"]) == 48
