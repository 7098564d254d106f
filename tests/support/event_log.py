"""Reading the event log of an app, as the tests of the outbox and the stream do."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI
from sqlalchemy import select

from stockroom.events.models import Event


async def logged(application: FastAPI) -> list[dict[str, Any]]:
    """Every event body in the log, in log order."""
    async with application.state.resources.engine.connect() as connection:
        rows = await connection.execute(select(Event.body).order_by(Event.txid, Event.seq))
        return [orjson.loads(body) for (body,) in rows]
