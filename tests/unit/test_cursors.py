"""Every list's cursor: the ones a list hands out are taken back, and any other is refused
before a query runs (422; 410 for the event stream), however it was crafted. A value the
database column cannot hold must not reach the driver, which would make it a 500."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest

from stockroom.errors import InvalidRequestError
from stockroom.events.log import Position
from stockroom.http import decode_cursor, encode_cursor
from stockroom.items.repository import ItemFilter, Keyset, Listing
from stockroom.ledger.service import list_adjustments
from stockroom.webhooks import service as webhooks

INT64_MAX = 2**63 - 1
_AT = dt.datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=dt.UTC)
_ROW = SimpleNamespace(id=7, name_key="widget", price_cents=1999, created_at=_AT, updated_at=_AT)
SORTS = ["id", "-id", "name", "-name", "price", "-price", "created_at", "-updated_at"]


def _crafted(payload: list[Any]) -> str:
    """A cursor made by hand, as a client could send it."""
    return encode_cursor(payload)


# --- Items ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sort", SORTS)
def test_an_items_cursor_is_taken_back_by_the_same_sort(sort: str) -> None:
    keyset = Keyset(sort)
    payload = decode_cursor(encode_cursor(keyset.cursor_payload(_ROW)))
    params = Listing(ItemFilter(), keyset, payload, 10).params()
    assert params["after_id"] == 7
    assert params["limit"] == 11
    expected = {"name": "widget", "price": 1999, "created_at": _AT, "updated_at": _AT}
    assert params.get("after_value") == expected.get(keyset.key)


@pytest.mark.parametrize(
    ("sort", "payload"),
    [
        ("price", ["-price", 1999, 7]),  # another sort's cursor
        ("name", ["id", 7, 7]),
        ("id", ["id", 7]),  # too short
        ("id", ["id", 7, 7, 7]),
        ("id", []),
        ("id", ["id", 7, "7"]),
        ("id", ["id", 7, True]),
        ("id", ["id", 7, 7.0]),
        ("id", ["id", None, 7]),
        ("price", ["price", "19.99", 7]),
        ("price", ["price", 2**63, 7]),
        ("name", ["name", 5, 7]),
        ("created_at", ["created_at", "yesterday", 7]),
        ("created_at", ["created_at", "2026-11-25T12:00:00", 7]),  # no time zone
        ("created_at", ["created_at", 1764072000, 7]),
    ],
)
def test_an_items_cursor_of_another_shape_is_refused(sort: str, payload: list[Any]) -> None:
    listing = Listing(ItemFilter(), Keyset(sort), decode_cursor(_crafted(payload)), 10)
    with pytest.raises(InvalidRequestError) as caught:
        listing.params()
    assert caught.value.errors[0]["loc"] == ["query", "cursor"]


@pytest.mark.parametrize(
    ("sort", "payload"),
    [
        ("id", ["id", 7, INT64_MAX + 1]),
        ("id", ["id", INT64_MAX + 1, 7]),
        ("id", ["id", 7, -1]),
        ("-id", ["-id", 7, 2**64 - 1]),
        ("price", ["price", 1999, INT64_MAX + 1]),
        ("price", ["price", -1, 7]),
        ("created_at", ["created_at", _AT.isoformat(), INT64_MAX + 1]),
    ],
)
def test_an_items_cursor_whose_id_no_item_can_have_is_refused(
    sort: str, payload: list[Any]
) -> None:
    listing = Listing(ItemFilter(), Keyset(sort), decode_cursor(_crafted(payload)), 10)
    with pytest.raises(InvalidRequestError):
        listing.params()


@pytest.mark.parametrize(
    ("sort", "payload", "after_id"),
    [
        ("id", ["id", 2**31, 2**31], 2**31),  # past 32 bits: items.id is bigint (0007)
        ("-id", ["-id", INT64_MAX, INT64_MAX], INT64_MAX),
        ("price", ["price", 1999, 2**40], 2**40),
    ],
)
def test_an_items_cursor_takes_any_64_bit_id(sort: str, payload: list[Any], after_id: int) -> None:
    listing = Listing(ItemFilter(), Keyset(sort), decode_cursor(_crafted(payload)), 10)
    assert listing.params()["after_id"] == after_id


# --- The ledger -------------------------------------------------------------------------------


class _Store:
    """Stands in for an ItemStore: records the ledger query it is asked for."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, int | None, int]] = []

    async def adjustments(self, item_id: int, before: int | None, limit: int) -> list[Any]:
        self.asked.append((item_id, before, limit))
        return []


async def test_a_ledger_cursor_is_taken_back() -> None:
    store = _Store()
    page = await list_adjustments(store, 3, cursor=encode_cursor(["-id", 41]), limit=5)  # type: ignore[arg-type]
    assert page.adjustments == []
    assert store.asked == [(3, 41, 6)]


@pytest.mark.parametrize(
    "payload",
    [["id", 41], ["-id"], ["-id", "41"], ["-id", True], ["-id", 41.0], ["-id", 41, 1], [41]],
)
async def test_a_ledger_cursor_of_another_shape_is_refused_before_the_query(
    payload: list[Any],
) -> None:
    store = _Store()
    with pytest.raises(InvalidRequestError):
        await list_adjustments(store, 3, cursor=_crafted(payload), limit=5)  # type: ignore[arg-type]
    assert store.asked == []


@pytest.mark.parametrize("before", [-1, INT64_MAX + 1, 2**64 - 1])
async def test_a_ledger_cursor_beyond_any_id_is_refused_before_the_query(before: int) -> None:
    store = _Store()
    with pytest.raises(InvalidRequestError):
        await list_adjustments(store, 3, cursor=_crafted(["-id", before]), limit=5)  # type: ignore[arg-type]
    assert store.asked == []


# --- Webhooks and their delivery attempts -----------------------------------------------------


class _Session:
    """Stands in for an AsyncSession: the webhook exists; any query fails the test."""

    async def get(self, _model: Any, webhook_id: str) -> Any:
        return SimpleNamespace(id=webhook_id)

    async def scalars(self, _statement: Any) -> Any:
        raise AssertionError("the query ran")

    async def execute(self, _statement: Any) -> Any:
        raise AssertionError("the query ran")


@pytest.mark.parametrize(
    "payload",
    [
        ["webhooks", "not a time", "w-1"],
        ["webhooks", _AT.isoformat(), 5],
        ["webhooks", 5, "w-1"],
        ["-attempt", 5],
        ["webhooks", _AT.isoformat()],
    ],
)
async def test_a_webhook_list_cursor_of_another_shape_is_refused(payload: list[Any]) -> None:
    with pytest.raises(InvalidRequestError):
        await webhooks.list_webhooks(_Session(), cursor=_crafted(payload), limit=5)  # type: ignore[arg-type]


async def test_a_webhook_list_cursor_with_a_time_of_no_zone_is_refused() -> None:
    payload = ["webhooks", "2026-11-25T12:00:00", "w-1"]
    with pytest.raises(InvalidRequestError):
        await webhooks.list_webhooks(_Session(), cursor=_crafted(payload), limit=5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "payload", [["-attempt"], ["attempt", 5], ["-attempt", "5"], ["-attempt", False]]
)
async def test_an_attempts_cursor_of_another_shape_is_refused(payload: list[Any]) -> None:
    with pytest.raises(InvalidRequestError):
        await webhooks.list_attempts(_Session(), "w-1", cursor=_crafted(payload), limit=5)  # type: ignore[arg-type]


async def test_an_attempts_cursor_beyond_any_id_is_refused() -> None:
    cursor = _crafted(["-attempt", INT64_MAX + 1])
    with pytest.raises(InvalidRequestError):
        await webhooks.list_attempts(_Session(), "w-1", cursor=cursor, limit=5)  # type: ignore[arg-type]


# --- The event stream (Last-Event-ID) ---------------------------------------------------------


@pytest.mark.parametrize(
    "position", [Position(0, 0), Position(123456789, 42), Position(INT64_MAX, 1)]
)
def test_an_event_id_names_its_position(position: Position) -> None:
    assert Position.parse(str(position)) == position
    assert Position.parse(f" {position} ") == position


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "-",
        "1",
        "1-",
        "-1",
        "-1-2",
        "1--2",
        "1-2-3",
        "a-b",
        "a-1",
        "1-b",
        "1.0-2",
        "+1-2",
        "1 -2",
        "1-2" + "0" * 40,
        "9" * 50 + "-1",
    ],
)
def test_an_event_id_that_is_not_ours_names_nothing(cursor: str) -> None:
    assert Position.parse(cursor) is None


@pytest.mark.parametrize(
    "cursor",
    [
        "\u00b2-1",  # a superscript two: isdigit(), but int() raises
        "1-\u0661",  # an Arabic-Indic one
        "\uff11-1",  # a full-width one
        f"{INT64_MAX + 1}-1",  # beyond the bigint column
        "1-" + "9" * 30,
    ],
)
def test_an_event_id_with_other_digits_or_beyond_64_bits_names_nothing(cursor: str) -> None:
    assert Position.parse(cursor) is None
