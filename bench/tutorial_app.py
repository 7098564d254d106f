"""What the common FastAPI + SQLModel tutorials teach, for `make bench`: table models, an
AsyncSession per request from a yield dependency, `session.exec(select(...))`, and the
model returned from the endpoint (FastAPI validates and serializes it). Echo off.

Same URLs, status codes and JSON shapes as Stockroom for the benchmark's requests; the
item is answered as its table model (``price_cents``, ``name_key``), as a tutorial would.
The adjustment locks the row (SELECT ... FOR UPDATE) so the ledger stays right under load.

The writes are the rows Stockroom writes, through the session: an adjustment updates the item
(quantity, version, updated_at) and adds its ledger row and its ``stock.adjusted`` event; a
new item (POST /items) adds the item, its ``initial`` ledger row and its ``item.created`` and
``stock.adjusted`` events, in one commit. The events' bodies have the shape of Stockroom's
(``{"id", "type", "created_at", "data"}``, ``data`` the API's item or adjustment); ``seq`` and
``txid`` come from the table's defaults.

Run: BENCH_DATABASE_URL=postgresql+asyncpg://... uvicorn tutorial_app:app
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import Column, DateTime
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import Field, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/stockroom_bench"
)
POOL_SIZE = int(os.environ.get("BENCH_POOL_SIZE", "20"))  # 10 + 10 overflow by default
engine = create_async_engine(
    DATABASE_URL, echo=False, pool_size=POOL_SIZE // 2, max_overflow=POOL_SIZE - POOL_SIZE // 2
)


class Item(SQLModel, table=True):
    __tablename__ = "items"

    id: int | None = Field(default=None, primary_key=True)
    sku: str
    name: str
    name_key: str
    description: str | None = None
    price_cents: int
    quantity: int = 0
    version: int = 1
    created_at: dt.datetime = Field(sa_column=Column(DateTime(timezone=True)))
    updated_at: dt.datetime = Field(sa_column=Column(DateTime(timezone=True)))


class Adjustment(SQLModel, table=True):
    __tablename__ = "adjustments"

    id: int | None = Field(default=None, primary_key=True)
    item_id: int = Field(foreign_key="items.id")
    delta: int
    reason: str | None = None
    quantity_after: int
    created_at: dt.datetime = Field(sa_column=Column(DateTime(timezone=True)))


class Event(SQLModel, table=True):
    __tablename__ = "events"

    seq: int | None = Field(default=None, primary_key=True)
    id: str
    type: str
    body: str
    created_at: dt.datetime = Field(sa_column=Column(DateTime(timezone=True)))


class AdjustmentCreate(SQLModel):
    delta: int
    reason: str | None = None


class ItemCreate(SQLModel):
    sku: str
    name: str
    description: str | None = None
    price: Decimal
    quantity: int = 0


def utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def new_event(kind: str, data: dict[str, Any], at: dt.datetime) -> Event:
    event_id = str(uuid.uuid4())
    body = {"id": event_id, "type": kind, "created_at": utc(at), "data": data}
    return Event(id=event_id, type=kind, body=json.dumps(body), created_at=at)


def item_data(item: Item) -> dict[str, Any]:
    return {
        "id": item.id,
        "sku": item.sku,
        "name": item.name,
        "description": item.description,
        "price": f"{Decimal(item.price_cents) / 100:.2f}",
        "quantity": item.quantity,
        "version": item.version,
        "created_at": utc(item.created_at),
        "updated_at": utc(item.updated_at),
    }


def adjustment_data(adjustment: Adjustment) -> dict[str, Any]:
    return {
        "id": adjustment.id,
        "item_id": adjustment.item_id,
        "delta": adjustment.delta,
        "reason": adjustment.reason,
        "quantity_after": adjustment.quantity_after,
        "created_at": utc(adjustment.created_at),
    }


class ItemPage(BaseModel):
    data: list[Item]
    next_cursor: str | None


async def get_session() -> AsyncIterator[AsyncSession]:
    async with AsyncSession(engine) as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
app = FastAPI()


@app.get("/ping")
async def ping() -> dict[str, str]:
    return {"ping": "pong"}


@app.get("/items", response_model=ItemPage)
async def list_items(session: SessionDep, limit: int = 50, cursor: str | None = None) -> ItemPage:
    after = 0
    if cursor:
        _sort, _value, after = json.loads(
            base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        )
    statement = select(Item).where(Item.id > after).order_by(Item.id).limit(limit + 1)
    items = list((await session.exec(statement)).all())
    page = items[:limit]
    next_cursor = None
    if len(items) > limit:
        last = page[-1].id
        next_cursor = base64.urlsafe_b64encode(
            json.dumps(["id", last, last], separators=(",", ":")).encode()
        )
        next_cursor = next_cursor.decode().rstrip("=")
    return ItemPage(data=page, next_cursor=next_cursor)


@app.get("/items/{item_id}", response_model=Item)
async def get_item(item_id: int, session: SessionDep) -> Item:
    item = (await session.exec(select(Item).where(Item.id == item_id))).first()
    if item is None:
        raise HTTPException(status_code=404, detail="Item not found")
    return item


@app.post("/items/{item_id}/adjustments", response_model=Adjustment, status_code=201)
async def create_adjustment(
    item_id: int, body: AdjustmentCreate, session: SessionDep
) -> Adjustment:
    statement = select(Item).where(Item.id == item_id).with_for_update()
    item = (await session.exec(statement)).first()
    if item is None:
        raise HTTPException(status_code=404, detail="Item not found")
    if item.quantity + body.delta < 0:
        raise HTTPException(status_code=409, detail="Insufficient stock")
    now = dt.datetime.now(dt.UTC)
    item.quantity += body.delta
    item.version += 1
    item.updated_at = now
    adjustment = Adjustment(
        item_id=item_id,
        delta=body.delta,
        reason=body.reason,
        quantity_after=item.quantity,
        created_at=now,
    )
    session.add(item)
    session.add(adjustment)
    await session.flush()
    session.add(new_event("stock.adjusted", adjustment_data(adjustment), now))
    await session.commit()
    await session.refresh(adjustment)
    return adjustment


@app.post("/items", response_model=Item, status_code=201)
async def create_item(body: ItemCreate, session: SessionDep) -> Item:
    now = dt.datetime.now(dt.UTC)
    item = Item(
        sku=body.sku,
        name=body.name,
        name_key=body.name.casefold(),
        description=body.description,
        price_cents=int(body.price * 100),
        quantity=body.quantity,
        version=1,
        created_at=now,
        updated_at=now,
    )
    session.add(item)
    await session.flush()
    session.add(new_event("item.created", item_data(item), now))
    if item.quantity > 0:
        adjustment = Adjustment(
            item_id=item.id,
            delta=item.quantity,
            reason="initial",
            quantity_after=item.quantity,
            created_at=now,
        )
        session.add(adjustment)
        await session.flush()
        session.add(new_event("stock.adjusted", adjustment_data(adjustment), now))
    await session.commit()
    await session.refresh(item)
    return item
