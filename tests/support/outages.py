"""What the database-outage tests under load share (tests/test_crash.py, test_failover.py):
the answers their clients got, what the server logged about the wrong ones, and the
ledger's totals read back from the database."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx

from tests.support.servers import Server

__all__ = ["LEDGER_TOTALS_SQL", "Answer", "Recorder", "neither_success_nor_503", "why"]

# Each item's quantity beside the sum of its ledger's deltas (the ledger invariant).
LEDGER_TOTALS_SQL = (
    "SELECT i.id, i.quantity, COALESCE(SUM(a.delta), 0) AS total FROM items i "
    "LEFT JOIN adjustments a ON a.item_id = i.id GROUP BY i.id, i.quantity"
)
_SUCCESS = {"POST": 201, "GET": 200}


@dataclass(frozen=True)
class Answer:
    what: str  # "METHOD /route"
    at: float  # seconds since the load started
    status: int
    content_type: str
    retry_after: str | None
    request_id: str | None


@dataclass
class Recorder:
    """Every answer of a load, when it came, and the ids of the acknowledged adjustments."""

    started: float = field(default_factory=time.monotonic)
    answers: list[Answer] = field(default_factory=list)
    acknowledged: list[int] = field(default_factory=list)  # ids of 201 adjustments
    hangs: list[tuple[str, float]] = field(default_factory=list)  # client timeouts

    def note(self, what: str, response: httpx.Response) -> None:
        self.answers.append(
            Answer(
                what,
                time.monotonic() - self.started,
                response.status_code,
                response.headers.get("content-type", ""),
                response.headers.get("retry-after"),
                response.headers.get("x-request-id"),
            )
        )


def neither_success_nor_503(answers: list[Answer]) -> list[Answer]:
    """The answers that were neither their request's success (201 for a POST, 200 for a
    GET) nor a 503 problem with ``Retry-After``."""
    return [
        a
        for a in answers
        if a.status != _SUCCESS[a.what.split()[0]]
        and not (
            a.status == 503
            and a.content_type.startswith("application/problem+json")
            and a.retry_after is not None
        )
    ]


def why(server: Server, request_ids: set[str | None]) -> dict[str, int]:
    """What the server logged about these requests: each exception (its last line and the
    last frame of ours it went through) and how many requests it failed."""
    causes: dict[str, int] = {}
    for line in server.log_lines():
        if line.get("request_id") not in request_ids or "exception" not in line:
            continue
        told = str(line["exception"]).strip().splitlines()
        ours = [frame.strip() for frame in told if "/stockroom/" in frame and "File" in frame]
        cause = f"{told[-1][:200]} (at {ours[-1] if ours else '?'})"
        causes[cause] = causes.get(cause, 0) + 1
    return causes
