"""Read replicas' pure parts (issue #23): consistency tokens, how far behind a replica is, and
which replica a read may go to. The behaviour on real servers is tests/test_replicas*.py's."""

from __future__ import annotations

import asyncio

import pytest

from stockroom.database._postgresql._replicas import BEHIND, FAILED, ReplicaSet, _History
from stockroom.database.consistency import Consistency, Position, parse_lsn, parse_token
from stockroom.settings import load_settings

SYSTEM = 7_316_000_000_000_000_001
REPLICAS = "postgresql://u@r1/db,postgresql://u@r2/db"


def test_a_token_names_its_position_and_tokens_order_as_their_positions() -> None:
    position = Position(SYSTEM, 3, 0x16_B374D848)
    token = position.token
    assert len(token) == 40
    assert parse_token(token) == position
    later = [Position(SYSTEM, 3, 0x16_B374D849), Position(SYSTEM, 4, 0), Position(SYSTEM + 1, 1, 0)]
    for other in later:
        assert other > position
        assert other.token > token  # as strings, too: a client keeps the greatest


@pytest.mark.parametrize("text", ["", "0" * 39, "0" * 41, "G" * 40, "A" * 40, " " + "0" * 39])
def test_what_is_not_a_token_is_none(text: str) -> None:
    assert parse_token(text) is None


def test_pg_lsn_text_is_read_as_a_number() -> None:
    assert parse_lsn("0/0") == 0
    assert parse_lsn("16/B374D848") == 0x16_B374D848
    assert parse_lsn("FFFFFFFF/FFFFFFFF") == 2**64 - 1


def test_a_request_keeps_the_newest_position_it_saw() -> None:
    state = Consistency(None)
    state.saw(Position(SYSTEM, 1, 10))
    state.saw(Position(SYSTEM, 1, 5))
    assert state.seen == Position(SYSTEM, 1, 10)
    assert "behind" in repr(BEHIND)
    assert "failed" in repr(FAILED)


async def test_a_replicas_lag_is_the_time_since_the_primary_was_first_seen_past_it() -> None:
    history = _History(keep=10)
    now = asyncio.get_running_loop().time()
    for seconds_ago, lsn in [(3.0, 100), (2.0, 200), (1.0, 300)]:
        history.add(now - seconds_ago, lsn)
    assert history.lag(300) == 0.0  # replayed the newest sample: not behind
    assert history.lag(250) == pytest.approx(1.0, abs=0.1)
    assert history.lag(150) == pytest.approx(2.0, abs=0.1)
    assert history.lag(50) == pytest.approx(3.0, abs=0.1)


def replica_set() -> ReplicaSet:
    settings = load_settings(
        database_url="postgresql://u@primary/db", database_replica_urls=REPLICAS
    )

    async def never() -> Position:
        raise AssertionError("not sampled here")

    return ReplicaSet(settings, never)


def test_no_replica_serving_sends_reads_to_the_primary() -> None:
    replicas = replica_set()
    assert [r.name for r in replicas.replicas] == ["r1:5432/db", "r2:5432/db"]
    assert replicas.pick(None) == (None, "no replica serving")  # not checked yet


def test_reads_take_turns_and_a_token_prefers_a_replica_already_past_it() -> None:
    replicas = replica_set()
    first, second = replicas.replicas
    for replica, lsn in ((first, 100), (second, 200)):
        replica.reason = ""
        replica.position = Position(SYSTEM, 1, lsn)
    chosen = {replicas.pick(None)[0] for _ in range(4)}
    assert chosen == {first, second}
    # Past 150: only the second (as the sampler saw them; the read checks again).
    assert {replicas.pick(Position(SYSTEM, 1, 150))[0] for _ in range(4)} == {second}
    # Past both: still one of them (it may have caught up since the sample).
    assert replicas.pick(Position(SYSTEM, 1, 500))[0] in (first, second)
    # Another timeline or cluster: the primary.
    assert replicas.pick(Position(SYSTEM, 2, 1)) == (None, "token of another history")
    assert replicas.pick(Position(SYSTEM + 1, 1, 1)) == (None, "token of another history")
    # Excluded replicas take nothing.
    second.trip("unreachable: OSError")
    assert {replicas.pick(None)[0] for _ in range(4)} == {first}
    statuses = {s.name: (s.serving, s.reason) for s in replicas.status()}
    assert statuses["r2:5432/db"] == (False, "unreachable: OSError")
