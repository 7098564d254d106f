"""Dependencies shared by the routers, as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stockroom.database import Database

__all__ = ["DatabaseDep", "SessionDep"]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request, never shared between tasks.

    Services commit before they return; leaving this block rolls back whatever was not
    committed (an error, a client that went away) and returns the connection to the pool.
    """
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    async with sessions() as session:
        yield session


async def get_database(request: Request) -> Database:
    """The process's database (``stockroom.database``): write transactions of the stores."""
    database: Database = request.app.state.stores.database
    return database


SessionDep = Annotated[AsyncSession, Depends(get_session)]
DatabaseDep = Annotated[Database, Depends(get_database)]
