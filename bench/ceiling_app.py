"""The ceiling of `make bench` (**fastapi-ceiling**): what FastAPI itself allows. FastAPI
routes on an asyncpg pool (created and closed in the lifespan), no dependency, no auth, no
metrics, no middleware; each answer is one prebuilt ``Response`` of orjson bytes. Written for
the bench only.

It runs bare's SQL and serialisation (``bare_app``: the same statements, the same rows in one
transaction per write, the same bytes out); only the framework differs: FastAPI's routing,
its parameter parsing (path and query parameters as typed arguments) and, for the two POSTs,
its request body parsed and validated into a pydantic model, as a FastAPI route declares it.
Same endpoints, status codes and bodies as Stockroom for the benchmark's requests.

Run: BENCH_DSN=postgresql://... uvicorn ceiling_app:app --loop uvloop --http httptools
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Annotated

import asyncpg
import orjson
from bare_app import (
    DSN,
    GET_SQL,
    LIST_SQL,
    MAX_QUANTITY,
    POOL_SIZE,
    encode_cursor,
    item_headers,
    json,
    problem,
    public,
    write_adjustment,
    write_item,
)
from fastapi import FastAPI
from pydantic import BaseModel, Field, StrictInt
from starlette.responses import Response

pool: asyncpg.Pool
PONG = orjson.dumps({"ping": "pong"})


class AdjustmentIn(BaseModel):
    delta: Annotated[StrictInt, Field(ge=-1_000_000_000, le=1_000_000_000)]
    reason: Annotated[str, Field(max_length=200)] | None = None


class ItemIn(BaseModel):
    sku: Annotated[str, Field(min_length=1, max_length=64)]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: str | None = None
    price: Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=2)]
    quantity: Annotated[StrictInt, Field(ge=0, le=MAX_QUANTITY)] = 0


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    global pool
    pool = await asyncpg.create_pool(DSN, min_size=POOL_SIZE, max_size=POOL_SIZE)
    try:
        yield
    finally:
        await pool.close()


app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/ping")
async def ping() -> Response:
    return Response(PONG, media_type="application/json")


@app.get("/items")
async def list_items(limit: int = 50, cursor: str | None = None) -> Response:
    after = 0
    if cursor:
        try:
            sort, _value, after = orjson.loads(
                base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            )
            assert sort == "id"
            assert type(after) is int
        except (ValueError, AssertionError, orjson.JSONDecodeError):
            return problem(422, "bad cursor")
    if not 1 <= limit <= 500:
        return problem(422, "limit must be 1..500")
    rows = await pool.fetch(LIST_SQL, after, limit + 1)
    page = rows[:limit]
    last = page[-1]["id"] if page else None
    next_cursor = encode_cursor(["id", last, last]) if len(rows) > limit else None
    return json({"data": [public(row) for row in page], "next_cursor": next_cursor})


@app.post("/items", status_code=201)
async def create_item(body: ItemIn) -> Response:
    async with pool.acquire() as connection, connection.transaction():
        answer = await write_item(
            connection,
            body.sku,
            body.name,
            body.description or None,
            int(body.price * 100),
            body.quantity,
        )
    if answer is None:
        return problem(409, f"An item with sku {body.sku!r} already exists.")
    return json(answer, status=201, headers=item_headers(answer))


@app.get("/items/{item_id}")
async def get_item(item_id: int) -> Response:
    row = await pool.fetchrow(GET_SQL, item_id)
    if row is None:
        return problem(404, f"No item with id {item_id}.")
    return json(public(row), headers={"ETag": f'"{row["id"]}-{row["version"]}"'})


@app.post("/items/{item_id}/adjustments", status_code=201)
async def create_adjustment(item_id: int, body: AdjustmentIn) -> Response:
    if body.delta == 0:
        return problem(422, "delta must not be 0")
    async with pool.acquire() as connection, connection.transaction():
        answer = await write_adjustment(connection, item_id, body.delta, body.reason)
    if answer is None:
        return problem(409, "unknown item or insufficient stock")
    return json(answer, status=201)
