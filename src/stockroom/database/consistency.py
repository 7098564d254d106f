"""Consistency tokens: read-your-writes and monotonic reads across replicas, with no
server-side session.

A token names a point of the primary's history: the cluster's system identifier, the
timeline and a WAL position (LSN). A write's token is the primary's position taken after its
commit; a read's, the position of what it reflects (a replica's replay position taken after
the read, or the primary's). A request that sends ``Consistency-Token`` is answered from a
replica only once that replica has replayed past it (checked on the connection that serves
the read); otherwise from the primary. Tokens are 40 hex digits whose string order is the
order of (system, timeline, position): a client keeps the greatest it has seen and sends it.

A token from another system or another timeline (from before a failover) is never compared
with a replica's position: such a request reads from the primary, whose answer carries a
token of the new history.

The request's :class:`Consistency` lives in a context variable, set by
``stockroom.middleware.ConsistencyMiddleware`` (only where replicas are configured), read and
added to by the database (``_postgresql``), which knows nothing of HTTP.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from typing import NamedTuple

__all__ = [
    "CONSISTENCY",
    "REPLAYED",
    "TOKEN_HEADER",
    "Consistency",
    "Position",
    "parse_lsn",
    "parse_token",
]

TOKEN_HEADER = "Consistency-Token"
_TOKEN = re.compile(r"[0-9a-f]{40}")


class Position(NamedTuple):
    """A point of one cluster's history (ordered by system, timeline, then LSN, as tuples
    are: one is made on every read and write, so a plain tuple)."""

    system: int
    timeline: int
    lsn: int

    @property
    def token(self) -> str:
        return f"{self.system:016x}{self.timeline:08x}{self.lsn:016x}"

    def same_history(self, other: Position) -> bool:
        return self.system == other.system and self.timeline == other.timeline


def parse_token(text: str) -> Position | None:
    """The position a token names; None if it is not a token."""
    if not _TOKEN.fullmatch(text):
        return None
    return Position(int(text[:16], 16), int(text[16:24], 16), int(text[24:], 16))


def parse_lsn(text: str) -> int:
    """PostgreSQL's ``pg_lsn`` text form (``16/B374D848``) as a number."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


class Consistency:
    """One request's consistency: the position it asked for (``wanted``) and the newest
    position its reads and writes reflect (``seen``, the answer's token)."""

    __slots__ = ("seen", "wanted")

    def __init__(self, wanted: Position | None) -> None:
        self.wanted = wanted
        self.seen: Position | None = None

    def saw(self, position: Position) -> None:
        if self.seen is None or position > self.seen:
            self.seen = position


CONSISTENCY: ContextVar[Consistency | None] = ContextVar("stockroom_consistency", default=None)

# A replica's read may read the replica's replay position in its own statement (the hot
# GET by id does: ``pg_last_wal_replay_lsn()`` beside the row, evaluated after the
# statement's snapshot, so at or past what it shows) and leave it here, as pg_lsn text:
# the read then needs no statement of its own for its answer's token.
REPLAYED: ContextVar[str | None] = ContextVar("stockroom_replayed", default=None)
