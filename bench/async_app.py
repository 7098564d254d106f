"""The app of `make bench-async`: the same 50 ms of I/O written the three ways articles about
async FastAPI describe, plus a real database query through an async and a sync engine.

Bench-only code, not part of Stockroom. Database: BENCH_DATABASE (a PostgreSQL DSN).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

IO_SECONDS = 0.05
DSN = os.environ.get("BENCH_DATABASE", "postgresql://postgres@127.0.0.1:5432/postgres")
QUERY = text(f"SELECT pg_sleep({IO_SECONDS})")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # SQLAlchemy's default pools (5 + 10 overflow) on both: what a user gets without tuning.
    async_engine = create_async_engine(DSN.replace("postgresql://", "postgresql+asyncpg://"))
    sync_engine = create_engine(DSN.replace("postgresql://", "postgresql+psycopg://"))
    app.state.async_sessions = async_sessionmaker(async_engine)
    app.state.sync_sessions = sessionmaker(sync_engine)
    yield
    await async_engine.dispose()
    sync_engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/io/async")
async def io_async() -> dict[str, str]:
    await asyncio.sleep(IO_SECONDS)
    return {"ok": "async"}


@app.get("/io/def")
def io_def() -> dict[str, str]:
    time.sleep(IO_SECONDS)  # in Starlette's thread pool (40 threads)
    return {"ok": "def"}


@app.get("/io/blocking")
async def io_blocking() -> dict[str, str]:
    time.sleep(IO_SECONDS)  # noqa: ASYNC251 - the mistake being measured
    return {"ok": "blocking"}


async def async_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.async_sessions() as session:
        yield session


def sync_session(request: Request) -> Iterator[Session]:
    # The tutorial pattern: a sync yield dependency, run in the thread pool like the endpoint.
    with request.app.state.sync_sessions() as session:
        yield session


@app.get("/db/async")
async def db_async(session: Annotated[AsyncSession, Depends(async_session)]) -> dict[str, str]:
    await session.execute(QUERY)
    return {"ok": "db-async"}


@app.get("/db/def")
def db_def(session: Annotated[Session, Depends(sync_session)]) -> dict[str, str]:
    session.execute(QUERY)
    return {"ok": "db-def"}
