"""Events on PostgreSQL: written with asyncpg on the transaction's connection (``txid``
comes from the column's default, ``pg_current_xact_id()``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

__all__ = ["UTC_TEXT", "PostgresEventStore"]

# A timestamptz as the API writes times (events.log.format_time): RFC 3339 in UTC, with
# microseconds only when there are any. (date_part, a double, not extract, a numeric: half
# the time over 1,000,000 rows of an export.)
UTC_TEXT = (
    "CASE WHEN date_part('microseconds', {c})::bigint % 1000000 = 0 "
    "THEN to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
    "ELSE to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') END"
)
_COLUMNS = ("id", "type", "body", "created_at")
# Several events in one statement (one round trip, and the NOTIFY trigger fires once): the
# few of an API write as VALUES rows (a new item in stock has two), more as arrays (an
# array parameter costs more to encode than a few plain ones).
_INSERT = {
    count: "INSERT INTO events (id, type, body, created_at) VALUES "
    + ", ".join(f"(${4 * i + 1}, ${4 * i + 2}, ${4 * i + 3}, ${4 * i + 4})" for i in range(count))
    for count in (1, 2, 3, 4)
}
_INSERT_MANY = (
    "INSERT INTO events (id, type, body, created_at) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])"
)


class PostgresEventStore:
    async def append(self, connection: asyncpg.Connection, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        statement = _INSERT.get(len(rows))
        if statement is not None:
            await connection.execute(statement, *(row[name] for row in rows for name in _COLUMNS))
        else:
            columns = ([row[name] for row in rows] for name in _COLUMNS)
            await connection.execute(_INSERT_MANY, *columns)
