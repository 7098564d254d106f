"""The event log: write an event in the change's transaction; read the log in a safe order.

Writing: the domain that owns a change serialises its payload and hands the log a type and
that JSON (:func:`event_row`); the row is written in the change's own transaction, so it
commits or rolls back with it (a transactional outbox). There is no committed change without
its event and no event without its change. The log knows no domain: which types exist and
what their payloads hold is the business of the packages that write them.

Reading: a sequence number is taken when a row is inserted, not when its transaction
commits. Two transactions can take seq 7 and 8 and commit 8 first; a reader that moved
past 8 would never see 7. So readers do not walk ``seq`` alone:

- PostgreSQL: each event stores its transaction's id (``txid``, from
  ``pg_current_xact_id()``). A reader reads only events with ``txid < xmin``, the oldest
  transaction still running as of its statement's snapshot, in ``(txid, seq)`` order. Every
  transaction below ``xmin`` has ended, so that part of the log can no longer change; and
  every transaction that has not ended has a txid >= xmin, so anything it commits later
  sorts after everything read. The cost: an event becomes readable only once every
  transaction that started writing before it has ended, so a long write (an atomic import)
  holds back the events committed while it runs.
- SQLite: writers take turns (``BEGIN IMMEDIATE``), so seq order is commit order already;
  ``txid`` is 0 and readers walk ``seq``.

That horizon is the view ``event_log_horizon``, defined per database by migration 0005, so
the reading statements are the same SQL on both.

A position in the log is a :class:`Position` ``(txid, seq)``; its text form is the opaque
cursor clients see (``id:`` of the stream).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    and_,
    bindparam,
    column,
    delete,
    func,
    insert,
    literal,
    select,
    table,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from stockroom.db import begin_write
from stockroom.events.models import Event

__all__ = [
    "BETWEEN",
    "SESSION_WROTE_EVENTS",
    "START",
    "LoggedEvent",
    "Position",
    "append",
    "batch_end",
    "between_params",
    "event_body_parts",
    "event_exists",
    "event_ids",
    "event_row",
    "format_time",
    "latest_position",
    "prune",
    "read_after",
    "record",
]

# Set on a session that wrote events, for the after-commit wake-up (see events.wakeup).
SESSION_WROTE_EVENTS = "stockroom_wrote_events"


# A position's text: two numbers of ASCII digits (str.isdigit would take other scripts' digits,
# and "²", which int() refuses), each one the bigint columns hold: a larger number would reach
# the driver, which refuses it.
_POSITION_TEXT = re.compile(r"([0-9]{1,19})-([0-9]{1,19})")
_MAX_POSITION = 2**63 - 1


class Position(NamedTuple):
    """A place in the log: just after the event with this ``(txid, seq)``."""

    txid: int
    seq: int

    def __str__(self) -> str:
        return f"{self.txid}-{self.seq}"

    @classmethod
    def parse(cls, cursor: str) -> Position | None:
        """The position a cursor names, or None if it is not one of ours."""
        match = _POSITION_TEXT.fullmatch(cursor.strip())
        if match is None:
            return None
        txid, seq = int(match[1]), int(match[2])
        if txid > _MAX_POSITION or seq > _MAX_POSITION:
            return None
        return cls(txid, seq)


START = Position(0, 0)


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    position: Position
    id: str
    type: str
    body: str  # the webhook body, one JSON line
    created_at: dt.datetime


def format_time(moment: dt.datetime) -> str:
    """RFC 3339 in UTC, as the API writes times (``2026-11-25T12:00:00.123456Z``)."""
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _body(event_id: str, event_type: str, at: str, payload: str) -> str:
    """An event's body, one JSON line (``at`` formatted by :func:`format_time`)."""
    return f'{{"id":"{event_id}","type":"{event_type}","created_at":"{at}","data":{payload}}}'


def event_row(event_type: str, payload: str, at: dt.datetime) -> dict[str, Any]:
    """The columns of one new event (``txid`` comes from the database). ``payload`` is the
    event's ``data``, already serialised as JSON by the domain that owns it."""
    event_id = str(uuid.uuid4())
    body = _body(event_id, event_type, format_time(at), payload)
    return {"id": event_id, "type": event_type, "body": body, "created_at": at}


def event_ids(count: int) -> list[str]:
    """``count`` new event ids, random UUIDs (version 4) as :func:`event_row` makes them, but
    from one read of the system's random source: several times faster than one by one."""
    random = bytearray(os.urandom(16 * count))
    random[6::16] = bytes(byte & 0x0F | 0x40 for byte in random[6::16])  # version 4
    random[8::16] = bytes(byte & 0x3F | 0x80 for byte in random[8::16])  # variant RFC 4122
    h = random.hex()
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-{h[i + 12 : i + 16]}-{h[i + 16 : i + 20]}-"
        f"{h[i + 20 : i + 32]}"
        for i in range(0, 32 * count, 32)
    ]


def event_body_parts(event_type: str, at: dt.datetime) -> tuple[str, str, str]:
    """The body :func:`event_row` makes, around its two variable parts: for an event id
    ``i`` and a payload ``p``, the body is ``parts[0] + i + parts[1] + p + parts[2]``. For a
    database that puts many bodies together (the id from the database's own generator, the
    payloads made ahead) with the same bytes as :func:`event_row`'s."""
    head, rest = _body("\0", event_type, format_time(at), "\1").split("\0")
    middle, tail = rest.split("\1")
    return head, middle, tail


def record(session: AsyncSession, event_type: str, payload: str, *, at: dt.datetime) -> None:
    """Add one event to the session's transaction; it commits (or not) with the change."""
    session.add(Event(**event_row(event_type, payload, at)))
    session.info[SESSION_WROTE_EVENTS] = True


async def append(connection: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Write events (made by :func:`event_row`) in the connection's transaction."""
    if rows:
        await connection.execute(insert(Event), list(rows))


# The oldest transaction that may still commit an event, as of the statement's own
# snapshot: every event below it is final, and visible to that same snapshot if it
# committed. A scalar subquery of the reading statement: no round trip of its own, and no
# gap between it and the read (PostgreSQL evaluates it once, as an index condition).
_horizon_view = table("event_log_horizon", column("txid", BigInteger()))
_HORIZON = select(_horizon_view.c.txid).scalar_subquery()


_log_order = tuple_(Event.txid, Event.seq)


def _position(name: str) -> ColumnElement[Any]:
    return tuple_(
        bindparam(f"{name}_txid", type_=BigInteger()), bindparam(f"{name}_seq", type_=BigInteger())
    )


def _at(name: str, position: Position) -> dict[str, int]:
    return {f"{name}_txid": position.txid, f"{name}_seq": position.seq}


# The reading statements, built once (each is compiled once and cached by SQLAlchemy; built
# per call, building them was most of the dispatcher's fan-outs' work: docs/async.md): the
# final events after the position `after`, below the horizon.
_FINAL_AFTER = and_(_log_order > _position("after"), Event.txid < _HORIZON)
_LIMIT = bindparam("limit", type_=Integer())


def _reading(bodies: bool, bounded: bool) -> Any:
    body = Event.body if bodies else literal("")
    stmt: Any = select(Event.txid, Event.seq, Event.id, Event.type, body, Event.created_at)
    stmt = stmt.where(_FINAL_AFTER)
    if bounded:
        stmt = stmt.where(_log_order <= _position("until"))
    return stmt.order_by(Event.txid, Event.seq).limit(_LIMIT)


_READ = {(b, u): _reading(b, u) for b in (False, True) for u in (False, True)}
_batch = (
    select(Event.txid, Event.seq)
    .where(_FINAL_AFTER)
    .order_by(Event.txid, Event.seq)
    .limit(_LIMIT)
    .subquery()
)
_BATCH_END = (
    select(_batch.c.txid, _batch.c.seq, func.count().over())
    .order_by(_batch.c.txid.desc(), _batch.c.seq.desc())
    .limit(1)
)
_LATEST = (
    select(Event.txid, Event.seq)
    .where(Event.txid < _HORIZON)
    .order_by(Event.txid.desc(), Event.seq.desc())
    .limit(1)
)
# Events after the position `after` up to and including `end`, in log order.
BETWEEN = and_(_log_order > _position("after"), _log_order <= _position("end"))


def between_params(after: Position, end: Position) -> dict[str, int]:
    """The parameters of :data:`BETWEEN`."""
    return {**_at("after", after), **_at("end", end)}


async def read_after(
    connection: AsyncConnection | AsyncSession,
    after: Position,
    *,
    limit: int,
    until: Position | None = None,
    bodies: bool = True,
) -> list[LoggedEvent]:
    """Up to ``limit`` final events after ``after`` (and not after ``until``), in order;
    without their bodies (``""``) unless ``bodies``."""
    params = {**_at("after", after), "limit": limit}
    if until is not None:
        params.update(_at("until", until))
    rows = await connection.execute(_READ[bodies, until is not None], params)
    return [
        LoggedEvent(Position(txid, seq), event_id, kind, body, created_at)
        for txid, seq, event_id, kind, body, created_at in rows
    ]


async def batch_end(
    connection: AsyncConnection | AsyncSession, after: Position, *, limit: int
) -> tuple[Position, int] | None:
    """The position of the last of the next ``limit`` final events after ``after``, and how
    many they are (None: there is none yet). Every event in :data:`BETWEEN` ``after`` and
    that end is final then: a reader can work on that range with set-based SQL, in later
    statements."""
    params = {**_at("after", after), "limit": limit}
    row = (await connection.execute(_BATCH_END, params)).first()
    return (Position(row[0], row[1]), row[2]) if row is not None else None


async def latest_position(connection: AsyncConnection | AsyncSession) -> Position:
    """The position of the last final event: a reader starting here misses nothing later."""
    row = (await connection.execute(_LATEST)).first()
    return Position(row[0], row[1]) if row is not None else START


async def prune(session: AsyncSession, older_than: dt.datetime, *, batch: int = 5000) -> int:
    """Delete one batch of events older than ``older_than`` (with their deliveries)."""
    oldest = select(Event.seq).where(Event.created_at < older_than).order_by(Event.seq)
    # A look without the lock first: on SQLite the lock is the database's write lock.
    if await session.scalar(oldest.limit(1)) is None:
        await session.rollback()
        return 0
    await session.rollback()
    await begin_write(session)
    result = await session.execute(
        delete(Event).where(Event.seq.in_(oldest.limit(batch).scalar_subquery()))
    )
    await session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


async def event_exists(connection: AsyncConnection | AsyncSession, position: Position) -> bool:
    stmt = select(Event.seq).where(Event.txid == position.txid, Event.seq == position.seq)
    return (await connection.scalar(stmt)) is not None
