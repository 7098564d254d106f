"""The ledger as a state machine: items and stock adjustments driven over HTTP against a
real `stockroom serve` process, checked against a small in-memory model after every step.

Invariant, for every item the machine made: its quantity equals the model's and the sum of
its ledger's deltas, never below 0; its version grew by exactly one on every change; the
newest adjustment's `quantity_after` is the quantity.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.support.problems import problem
from tests.support.servers import Server, start_server

pytestmark = pytest.mark.slow

# Small pools, so that a PATCH sometimes sends the values the item already has (no change,
# no new version). 2.5 and "2.50" are the same price.
NAMES = ("Oak chair", "Pine table", "Brass lamp")
PRICES = ("1.00", "2.50", 2.5, "10", 10, "10.00")
REASONS = (None, "restock", "sale", "damaged")
DELTAS = st.integers(-60, 60).filter(bool)

_skus = itertools.count(1)


@dataclass
class Expected:
    """What the model says an item is; ``ledger`` is oldest first: (delta, after, reason)."""

    id: int
    name: str
    price: Decimal
    quantity: int
    version: int
    ledger: list[tuple[int, int, str | None]] = field(default_factory=list)


@dataclass(frozen=True)
class Replay:
    """An accepted idempotent adjustment, to repeat later."""

    item_id: int
    key: str
    body: dict[str, Any]
    answer: bytes


def _problem_type(response: httpx.Response, status: int) -> str:
    body = problem(response, status)
    kind: str = body["type"]
    return kind


class LedgerMachine(RuleBasedStateMachine):
    """Set ``http`` (a client of the server holding a `write` key) in a subclass."""

    http: httpx.Client

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[int, Expected] = {}
        self.deleted: set[int] = set()
        self.replays: list[Replay] = []
        self.page_size = 50

    # -- helpers -----------------------------------------------------------------------

    def _ids(self) -> list[int]:
        return sorted(self.items)

    def _walk(self, path: str, limit: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": limit}
        for _ in range(10_000):
            response = self.http.get(path, params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            assert set(page) == {"data", "next_cursor"}, page
            rows.extend(page["data"])
            if page["next_cursor"] is None:
                return rows
            assert page["data"], "a non-empty cursor after an empty page"
            params["cursor"] = page["next_cursor"]
        raise AssertionError(f"{path}: the cursors never end")

    def _adjust(self, item_id: int, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key is not None else {}
        return self.http.post(f"/items/{item_id}/adjustments", json=body, headers=headers)

    def _applied(self, item: Expected, delta: int, reason: str | None, answer: Any) -> None:
        """Check an accepted adjustment's body and record it in the model."""
        after = item.quantity + delta
        assert answer["item_id"] == item.id
        assert answer["delta"] == delta
        assert answer["reason"] == reason
        assert answer["quantity_after"] == after
        item.quantity = after
        item.version += 1
        item.ledger.append((delta, after, reason))

    def _refused(self, item: Expected, response: httpx.Response) -> None:
        body = problem(response, 409)
        assert body["type"].endswith("insufficient-stock"), body
        assert body["available"] == item.quantity, body

    # -- set-up --------------------------------------------------------------------------

    @initialize(page_size=st.sampled_from([1, 2, 3, 7, 50]))
    def start_empty(self, page_size: int) -> None:
        """Every example starts with no items: drain and delete whatever earlier ones left."""
        self.page_size = page_size
        for row in self._walk("/items", 500):
            if row["quantity"]:
                response = self._adjust(row["id"], {"delta": -row["quantity"]})
                assert response.status_code == 201, response.text
            response = self.http.delete(f"/items/{row['id']}")
            assert response.status_code == 204, response.text
        assert self._walk("/items", 500) == []

    # -- rules ---------------------------------------------------------------------------

    @rule(
        quantity=st.integers(0, 50),
        name=st.sampled_from(NAMES),
        price=st.sampled_from(PRICES),
    )
    def create(self, quantity: int, name: str, price: str | int | float) -> None:
        sku = f"SM-{uuid.uuid4().hex[:6]}-{next(_skus)}"
        body = {"sku": sku, "name": name, "price": price, "quantity": quantity}
        response = self.http.post("/items", json=body)
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["sku"] == sku
        assert created["quantity"] == quantity
        assert created["version"] == 1
        assert response.headers["etag"] == f'"{created["id"]}-1"'
        assert created["id"] not in self.items
        assert created["id"] not in self.deleted, "a deleted item's id was given out again"
        item = Expected(created["id"], name, Decimal(str(price)), quantity, 1)
        if quantity:
            item.ledger.append((quantity, quantity, "initial"))
        self.items[item.id] = item

    @precondition(lambda self: self.items)
    @rule(data=st.data(), delta=DELTAS, reason=st.sampled_from(REASONS))
    def adjust(self, data: st.DataObject, delta: int, reason: str | None) -> None:
        item = self.items[data.draw(st.sampled_from(self._ids()), label="item")]
        body: dict[str, Any] = {"delta": delta}
        if reason is not None:
            body["reason"] = reason
        response = self._adjust(item.id, body)
        if item.quantity + delta < 0:
            self._refused(item, response)
        else:
            assert response.status_code == 201, response.text
            self._applied(item, delta, reason, response.json())

    @precondition(lambda self: any(item.quantity for item in self.items.values()))
    @rule(data=st.data())
    def sell_out(self, data: st.DataObject) -> None:
        """Take exactly all stock, so that deletion has a chance."""
        stocked = [i for i in self._ids() if self.items[i].quantity]
        item = self.items[data.draw(st.sampled_from(stocked), label="item")]
        response = self._adjust(item.id, {"delta": -item.quantity, "reason": "sale"})
        assert response.status_code == 201, response.text
        self._applied(item, -item.quantity, "sale", response.json())

    @precondition(lambda self: self.items)
    @rule(
        data=st.data(),
        name=st.none() | st.sampled_from(NAMES),
        price=st.none() | st.sampled_from(PRICES),
    )
    def patch(self, data: st.DataObject, name: str | None, price: str | float | None) -> None:
        item = self.items[data.draw(st.sampled_from(self._ids()), label="item")]
        body: dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if price is not None:
            body["price"] = price
        response = self.http.patch(f"/items/{item.id}", json=body)
        assert response.status_code == 200, response.text
        changed = (name is not None and name != item.name) or (
            price is not None and Decimal(str(price)) != item.price
        )
        if changed:
            item.version += 1
        if name is not None:
            item.name = name
        if price is not None:
            item.price = Decimal(str(price))
        updated = response.json()
        assert updated["version"] == item.version, (body, updated)
        assert updated["quantity"] == item.quantity
        assert updated["name"] == item.name
        assert updated["price"] == f"{item.price:.2f}"
        assert response.headers["etag"] == f'"{item.id}-{item.version}"'

    @precondition(lambda self: self.items)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        item = self.items[data.draw(st.sampled_from(self._ids()), label="item")]
        response = self.http.delete(f"/items/{item.id}")
        if item.quantity != 0:
            assert _problem_type(response, 409).endswith("stock-not-zero")
            return
        assert response.status_code == 204, response.text
        assert response.content == b""
        del self.items[item.id]
        self.deleted.add(item.id)
        problem(self.http.get(f"/items/{item.id}"), 404)
        problem(self.http.get(f"/items/{item.id}/adjustments"), 404)

    @precondition(lambda self: self.deleted)
    @rule(data=st.data(), delta=DELTAS)
    def touch_deleted(self, data: st.DataObject, delta: int) -> None:
        """A deleted item stays gone: reads, stock changes and updates all 404."""
        item_id = data.draw(st.sampled_from(sorted(self.deleted)), label="deleted item")
        problem(self.http.get(f"/items/{item_id}"), 404)
        problem(self.http.get(f"/items/{item_id}/adjustments"), 404)
        problem(self._adjust(item_id, {"delta": delta}), 404)
        problem(self.http.patch(f"/items/{item_id}", json={"name": "Ghost"}), 404)
        problem(self.http.delete(f"/items/{item_id}"), 404)

    @precondition(lambda self: self.items)
    @rule(data=st.data(), delta=DELTAS, reason=st.sampled_from(REASONS))
    def adjust_twice_with_one_key(
        self, data: st.DataObject, delta: int, reason: str | None
    ) -> None:
        item = self.items[data.draw(st.sampled_from(self._ids()), label="item")]
        key = f"sm-{uuid.uuid4()}"
        body: dict[str, Any] = {"delta": delta, "reason": reason}
        first = self._adjust(item.id, body, key)
        second = self._adjust(item.id, body, key)
        if item.quantity + delta < 0:
            # Errors applied nothing and are not stored: the repeat runs, and fails, again.
            self._refused(item, first)
            self._refused(item, second)
            return
        assert first.status_code == 201, first.text
        assert second.status_code == 201, second.text
        assert "idempotent-replayed" not in first.headers
        assert second.headers["idempotent-replayed"] == "true"
        assert second.content == first.content
        self._applied(item, delta, reason, first.json())
        self.replays.append(Replay(item.id, key, body, first.content))

    @precondition(lambda self: self.replays)
    @rule(data=st.data(), other_delta=DELTAS)
    def repeat_an_earlier_key(self, data: st.DataObject, other_delta: int) -> None:
        """Later (the stock has moved on, the item may be gone) the same request still gets
        the first answer and changes nothing; the same key with another body is 422."""
        replay = data.draw(st.sampled_from(self.replays), label="replay")
        again = self._adjust(replay.item_id, replay.body, replay.key)
        assert again.status_code == 201, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.content == replay.answer
        if other_delta != replay.body["delta"]:
            changed = {**replay.body, "delta": other_delta}
            problem(self._adjust(replay.item_id, changed, replay.key), 422)

    # -- the invariant -------------------------------------------------------------------

    @invariant()
    def stock_is_explained_by_the_ledger(self) -> None:
        listed = {row["id"]: row for row in self._walk("/items", 500)}
        assert sorted(listed) == self._ids(), "the service's items differ from the model's"
        for item in self.items.values():
            row = listed[item.id]
            assert row["quantity"] == item.quantity, (row, item)
            assert row["quantity"] >= 0
            assert row["version"] == item.version, (row, item)
            assert row["name"] == item.name
            assert row["price"] == f"{item.price:.2f}"

            ledger = self._walk(f"/items/{item.id}/adjustments", self.page_size)
            ids = [entry["id"] for entry in ledger]
            assert ids == sorted(set(ids), reverse=True), f"not newest first, once: {ids}"
            assert all(entry["item_id"] == item.id for entry in ledger)
            assert sum(entry["delta"] for entry in ledger) == row["quantity"]
            newest_first = [(e["delta"], e["quantity_after"], e["reason"]) for e in ledger]
            assert newest_first == item.ledger[::-1], (newest_first, item.ledger)
            if ledger:
                assert ledger[0]["quantity_after"] == row["quantity"]
            else:
                assert row["quantity"] == 0


@pytest.fixture
def stockroom_server(
    database_url: str, tmp_path: Path, client: httpx.AsyncClient
) -> Iterator[Server]:
    # `client` is requested only so that the tables are emptied afterwards.
    running = start_server(database_url, tmp_path)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()


def test_ledger_explains_stock_through_any_sequence_of_requests(
    stockroom_server: Server, admin_key: str
) -> None:
    # admin_key: made in-process, as `stockroom apikey create` makes it, in the server's
    # database (the CLI's own tests run the command).
    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=stockroom_server.url, headers=headers, timeout=30) as http:

        class Machine(LedgerMachine):
            pass

        Machine.http = http
        run_state_machine_as_test(
            Machine,
            settings=settings(max_examples=15, stateful_step_count=25, deadline=None),
        )
