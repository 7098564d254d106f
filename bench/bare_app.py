"""The ceiling for `make bench`: Starlette routing, an asyncpg pool and orjson, no ORM and no
validation library. It answers the benchmark's requests with the same status codes and the
same JSON bodies, byte for byte, as Stockroom (GET /items/{id}, the list page with `limit` and
`cursor`, POST /items/{id}/adjustments, /ping). Not an API: no auth, no other endpoints.

Run: BENCH_DSN=postgresql://... uvicorn bare_app:app --loop uvloop --http httptools
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

DSN = os.environ.get("BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/stockroom_bench")
POOL_SIZE = int(os.environ.get("BENCH_POOL_SIZE", "20"))  # Stockroom: 10 + 10 overflow
MAX_QUANTITY = 2_147_483_647
COLUMNS = "id, sku, name, description, price_cents, quantity, version, created_at, updated_at"
pool: asyncpg.Pool


def json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_UTC_Z),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def problem(status: int, detail: str) -> Response:
    return Response(
        orjson.dumps({"status": status, "detail": detail}),
        status_code=status,
        media_type="application/problem+json",
    )


def public(row: asyncpg.Record) -> dict[str, object]:
    cents = row["price_cents"]
    return {
        "id": row["id"],
        "sku": row["sku"],
        "name": row["name"],
        "description": row["description"],
        "price": f"{cents // 100}.{cents % 100:02d}",
        "quantity": row["quantity"],
        "version": row["version"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def item_id(request: Request) -> int | None:
    try:
        value = int(request.path_params["item_id"])
    except ValueError:
        return None
    return value if 1 <= value <= MAX_QUANTITY else None


async def ping(_request: Request) -> Response:
    return json({"ping": "pong"})


async def get_item(request: Request) -> Response:
    wanted = item_id(request)
    if wanted is None:
        return problem(422, "item_id must be an integer")
    row = await pool.fetchrow(f"SELECT {COLUMNS} FROM items WHERE id = $1", wanted)
    if row is None:
        return problem(404, f"No item with id {wanted}.")
    return json(public(row), headers={"ETag": f'"{row["id"]}-{row["version"]}"'})


def encode_cursor(payload: list[object]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


async def list_items(request: Request) -> Response:
    try:
        limit = int(request.query_params.get("limit", "50"))
        after = 0
        if cursor := request.query_params.get("cursor"):
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            sort, _value, after = orjson.loads(raw)
            assert sort == "id"
            assert type(after) is int
    except (ValueError, AssertionError, orjson.JSONDecodeError):
        return problem(422, "bad limit or cursor")
    if not 1 <= limit <= 500:
        return problem(422, "limit must be 1..500")
    rows = await pool.fetch(
        f"SELECT {COLUMNS} FROM items WHERE id > $1 ORDER BY id LIMIT $2", after, limit + 1
    )
    page = rows[:limit]
    last = page[-1]["id"] if page else None
    next_cursor = encode_cursor(["id", last, last]) if len(rows) > limit else None
    return json({"data": [public(row) for row in page], "next_cursor": next_cursor})


async def create_adjustment(request: Request) -> Response:
    wanted = item_id(request)
    try:
        body = orjson.loads(await request.body())
        delta, reason = body["delta"], body.get("reason")
        assert type(delta) is int
        assert 0 < abs(delta) <= 1_000_000_000
        assert reason is None or type(reason) is str
    except (KeyError, TypeError, AssertionError, orjson.JSONDecodeError):
        return problem(422, "bad body")
    if wanted is None:
        return problem(422, "item_id must be an integer")
    now = dt.datetime.now(dt.UTC)
    async with pool.acquire() as connection, connection.transaction():
        quantity_after = await connection.fetchval(
            "UPDATE items SET quantity = quantity + $2, version = version + 1, updated_at = $3 "
            "WHERE id = $1 AND quantity::bigint + $2 >= 0 AND quantity::bigint + $2 <= $4 "
            "RETURNING quantity",
            wanted, delta, now, MAX_QUANTITY,
        )  # fmt: skip
        if quantity_after is None:
            return problem(409, "unknown item or insufficient stock")
        new_id = await connection.fetchval(
            "INSERT INTO adjustments (item_id, delta, reason, quantity_after, created_at) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING id",
            wanted, delta, reason, quantity_after, now,
        )  # fmt: skip
    answer = {
        "id": new_id,
        "item_id": wanted,
        "delta": delta,
        "reason": reason,
        "quantity_after": quantity_after,
        "created_at": now,
    }
    return json(answer, status=201)


@asynccontextmanager
async def lifespan(_app: Starlette) -> AsyncIterator[None]:
    global pool
    pool = await asyncpg.create_pool(DSN, min_size=POOL_SIZE, max_size=POOL_SIZE)
    try:
        yield
    finally:
        await pool.close()


app = Starlette(
    routes=[
        Route("/ping", ping),
        Route("/items", list_items),
        Route("/items/{item_id}", get_item),
        Route("/items/{item_id}/adjustments", create_adjustment, methods=["POST"]),
    ],
    lifespan=lifespan,
)
