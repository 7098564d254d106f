"""The reference of `make bench` (**bare**): Starlette routing, an asyncpg pool and orjson, no
ORM and no validation library. It answers the benchmark's requests with the same status codes
and the same JSON bodies, byte for byte, as Stockroom (GET /items/{id}, the list page with
`limit` and `cursor`, POST /items/{id}/adjustments, POST /items, /ping). Not an API: no auth,
no other endpoints.

The writes are the rows Stockroom writes, in one transaction each (see ``write_adjustment``
and ``write_item``; the fastapi-ceiling app runs the same functions):
- an adjustment: the conditional UPDATE of the item (quantity, version + 1, updated_at), its
  ledger row in ``adjustments``, and its ``stock.adjusted`` row in ``events``;
- a new item: the ``items`` row, its ``initial`` ledger row (for a quantity > 0), and its
  ``item.created`` and ``stock.adjusted`` rows in ``events``.
An event row is what Stockroom's event log writes (``events.log.event_row``): a fresh uuid4
``id``, ``type``, ``body`` = the JSON ``{"id", "type", "created_at", "data"}`` with ``data``
the API's item or adjustment, ``created_at``; ``seq`` and ``txid`` (pg_current_xact_id())
come from the column defaults, and the table's NOTIFY trigger fires as it does for Stockroom.

Run: BENCH_DSN=postgresql://... uvicorn bare_app:app --loop uvloop --http httptools
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal, InvalidOperation

import asyncpg
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

DSN = os.environ.get("BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/stockroom_bench")
POOL_SIZE = int(os.environ.get("BENCH_POOL_SIZE", "20"))  # Stockroom: 10 + 10 overflow
MAX_QUANTITY = 2_147_483_647
COLUMNS = (
    "id, sku, name, description, price_cents, quantity, version, created_at, updated_at, "
    "reorder_point"
)
GET_SQL = f"SELECT {COLUMNS} FROM items WHERE id = $1"
LIST_SQL = f"SELECT {COLUMNS} FROM items WHERE id > $1 ORDER BY id LIMIT $2"
ADJUST_SQL = (
    "UPDATE items SET quantity = quantity + $2, version = version + 1, updated_at = $3 "
    "WHERE id = $1 AND quantity::bigint + $2 >= 0 AND quantity::bigint + $2 <= $4 "
    "RETURNING quantity"
)
LEDGER_SQL = (
    "INSERT INTO adjustments (item_id, delta, reason, quantity_after, created_at) "
    "VALUES ($1, $2, $3, $4, $5) RETURNING id"
)
EVENT_SQL = "INSERT INTO events (id, type, body, created_at) VALUES ($1, $2, $3, $4)"
# Both events of a new item in one statement (the trigger fires once, as for one INSERT).
EVENTS_SQL = (
    "INSERT INTO events (id, type, body, created_at) VALUES ($1, $2, $3, $4), ($5, $6, $7, $8)"
)
ITEM_SQL = (
    "INSERT INTO items (sku, name, name_key, description, price_cents, quantity, version, "
    "created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7) "
    "ON CONFLICT (sku) DO NOTHING RETURNING id"
)
REASON_INITIAL = "initial"
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


def public(row: asyncpg.Record | dict[str, object]) -> dict[str, object]:
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
        "reorder_point": row["reorder_point"],
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
    row = await pool.fetchrow(GET_SQL, wanted)
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
    rows = await pool.fetch(LIST_SQL, after, limit + 1)
    page = rows[:limit]
    last = page[-1]["id"] if page else None
    next_cursor = encode_cursor(["id", last, last]) if len(rows) > limit else None
    return json({"data": [public(row) for row in page], "next_cursor": next_cursor})


def event(kind: str, data: dict[str, object], at: dt.datetime) -> tuple[str, str, str, dt.datetime]:
    """One events row as Stockroom's event log writes it: (id, type, body, created_at)."""
    event_id = str(uuid.uuid4())
    body = {"id": event_id, "type": kind, "created_at": at, "data": data}
    return event_id, kind, orjson.dumps(body, option=orjson.OPT_UTC_Z).decode(), at


async def write_adjustment(
    connection: asyncpg.Connection, item: int, delta: int, reason: str | None
) -> dict[str, object] | None:
    """Stockroom's adjustment, in the caller's transaction: the conditional UPDATE (quantity,
    version, updated_at), the ledger row and the stock.adjusted event. None: refused."""
    now = dt.datetime.now(dt.UTC)
    quantity_after = await connection.fetchval(ADJUST_SQL, item, delta, now, MAX_QUANTITY)
    if quantity_after is None:
        return None
    new_id = await connection.fetchval(LEDGER_SQL, item, delta, reason, quantity_after, now)
    answer = {
        "id": new_id,
        "item_id": item,
        "delta": delta,
        "reason": reason,
        "quantity_after": quantity_after,
        "created_at": now,
    }
    await connection.execute(EVENT_SQL, *event("stock.adjusted", answer, now))
    return answer


async def write_item(
    connection: asyncpg.Connection,
    sku: str,
    name: str,
    description: str | None,
    price_cents: int,
    quantity: int,
) -> dict[str, object] | None:
    """Stockroom's new item, in the caller's transaction: the items row, its `initial`
    ledger row (quantity > 0) and the item.created and stock.adjusted events. None: the sku
    exists."""
    now = dt.datetime.now(dt.UTC)
    new_id = await connection.fetchval(
        ITEM_SQL, sku, name, name.casefold(), description, price_cents, quantity, now
    )
    if new_id is None:
        return None
    item = {
        "id": new_id,
        "sku": sku,
        "name": name,
        "description": description,
        "price_cents": price_cents,
        "quantity": quantity,
        "version": 1,
        "created_at": now,
        "updated_at": now,
        "reorder_point": None,
    }
    answer = public(item)
    created = event("item.created", answer, now)
    if quantity == 0:
        await connection.execute(EVENT_SQL, *created)
        return answer
    ledger_id = await connection.fetchval(
        LEDGER_SQL, new_id, quantity, REASON_INITIAL, quantity, now
    )
    adjustment = {
        "id": ledger_id,
        "item_id": new_id,
        "delta": quantity,
        "reason": REASON_INITIAL,
        "quantity_after": quantity,
        "created_at": now,
    }
    await connection.execute(EVENTS_SQL, *created, *event("stock.adjusted", adjustment, now))
    return answer


def item_headers(answer: dict[str, object]) -> dict[str, str]:
    return {"Location": f"/items/{answer['id']}", "ETag": f'"{answer["id"]}-{answer["version"]}"'}


def to_cents(price: object) -> int:
    """A price (JSON number or string, >= 0, at most two places) in cents."""
    if type(price) not in (int, float, str):
        raise ValueError(price)
    amount = Decimal(str(price))
    if not amount.is_finite() or amount < 0 or amount != amount.quantize(Decimal("0.01")):
        raise ValueError(price)
    return int(amount * 100)


async def create_item(request: Request) -> Response:
    try:
        body = orjson.loads(await request.body())
        sku, name = body["sku"], body["name"]
        description, quantity = body.get("description"), body.get("quantity", 0)
        assert type(sku) is str
        assert type(name) is str
        assert 1 <= len(sku) <= 64
        assert 1 <= len(name) <= 200
        assert description is None or type(description) is str
        assert type(quantity) is int
        assert 0 <= quantity <= MAX_QUANTITY
        cents = to_cents(body["price"])
    except (KeyError, TypeError, ValueError, AssertionError, InvalidOperation):
        return problem(422, "bad body")
    async with pool.acquire() as connection, connection.transaction():
        answer = await write_item(connection, sku, name, description or None, cents, quantity)
    if answer is None:
        return problem(409, f"An item with sku {sku!r} already exists.")
    return json(answer, status=201, headers=item_headers(answer))


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
    async with pool.acquire() as connection, connection.transaction():
        answer = await write_adjustment(connection, wanted, delta, reason)
    if answer is None:
        return problem(409, "unknown item or insufficient stock")
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
        Route("/items", create_item, methods=["POST"]),
        Route("/items/{item_id}", get_item),
        Route("/items/{item_id}/adjustments", create_adjustment, methods=["POST"]),
    ],
    lifespan=lifespan,
)
