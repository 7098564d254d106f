"""What request bodies accept (items.schemas, auth.schemas): money as strings or numbers with
at most two places, names of one visible line, strict quantities, key names."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from stockroom.auth.schemas import KeyCreate
from stockroom.items.common import to_cents
from stockroom.items.schemas import (
    MAX_PRICE,
    MAX_QUANTITY,
    ItemCreate,
    ItemUpdate,
    Money,
    money_text,
)
from tests.unit.properties import UNTIMED

MONEY = TypeAdapter(Money)
MAX_CENTS = int(MAX_PRICE * 100)


def _errors(model: type[Any], body: dict[str, Any]) -> list[tuple[tuple[int | str, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return [(error["loc"], error["msg"]) for error in caught.value.errors()]


def _item(**fields: Any) -> dict[str, Any]:
    return {"sku": "SKU-1", "name": "Widget", "price": "1.00", **fields}


# --- Money ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "written"),
    [
        ("19.99", "19.99"),
        ("19.9", "19.90"),
        ("19", "19.00"),
        ("0", "0.00"),
        ("0.05", "0.05"),
        ("9999999999.99", "9999999999.99"),
        (19.99, "19.99"),
        (19.9, "19.90"),
        (7, "7.00"),
        (1e3, "1000.00"),
        (Decimal("12.5"), "12.50"),
    ],
)
def test_money_is_read_from_text_or_a_number_and_written_with_two_places(
    given: object, written: str
) -> None:
    assert MONEY.dump_json(MONEY.validate_python(given)) == f'"{written}"'.encode()


@pytest.mark.parametrize(
    ("json", "cents"), [(b"19.99", 1999), (b'"19.99"', 1999), (b"1e2", 10000), (b"0.1", 10)]
)
def test_money_from_a_json_body(json: bytes, cents: int) -> None:
    assert to_cents(MONEY.validate_json(json)) == cents


@pytest.mark.parametrize(
    "given",
    [
        "1.999",  # three places
        "12.",
        ".5",
        "-1",
        "-0.01",
        "+1",
        " 1.00",
        "1.00 ",
        "1,00",
        "1_000",
        "1e3",  # as text, only plain digits
        "0x10",
        "NaN",
        "Infinity",
        "",
        "\u0661\u0662",  # Arabic-Indic digits
        "\uff11",  # a full-width 1
        "10000000000",  # above the largest price
        10.001,
        0.1 + 0.2,  # 0.30000000000000004
        -1,
        -0.01,
        10_000_000_000,
        float("nan"),
        float("inf"),
        True,
        None,
    ],
)
def test_money_refuses_anything_but_zero_to_the_maximum_with_two_places(given: object) -> None:
    with pytest.raises(ValidationError):
        MONEY.validate_python(given)


@settings(UNTIMED, max_examples=200)
@given(st.integers(min_value=0, max_value=MAX_CENTS))
def test_every_amount_in_cents_reads_back_from_its_text_and_its_number(cents: int) -> None:
    text = money_text(cents)
    assert to_cents(MONEY.validate_python(text)) == cents
    # A JSON number is a binary float: its shortest form still has at most two places.
    assert to_cents(MONEY.validate_json(repr(cents / 100))) == cents


@pytest.mark.parametrize(
    ("cents", "text"),
    [(0, "0.00"), (5, "0.05"), (50, "0.50"), (1999, "19.99"), (MAX_CENTS, str(MAX_PRICE))],
)
def test_money_text(cents: int, text: str) -> None:
    assert money_text(cents) == text


# --- Items ------------------------------------------------------------------------------------


def test_a_minimal_item_gets_no_description_and_no_stock() -> None:
    item = ItemCreate.model_validate(_item())
    assert item.description is None
    assert item.quantity == 0
    assert item.price == Decimal("1.00")


@pytest.mark.parametrize("sku", ["A", "sku-1", "A.B_C-9", "x" * 64])
def test_good_skus(sku: str) -> None:
    assert ItemCreate.model_validate(_item(sku=sku)).sku == sku


@pytest.mark.parametrize("sku", ["", "x" * 65, "a b", "a/b", "é", "abc\n", "a,b"])
def test_bad_skus(sku: str) -> None:
    assert [loc for loc, _ in _errors(ItemCreate, _item(sku=sku))] == [("sku",)]


@pytest.mark.parametrize(
    "name", ["Widget", " padded ", "Ünïcødé 名前", "a" * 200, 'tab-free, 5" pipe']
)
def test_good_names(name: str) -> None:
    assert ItemCreate.model_validate(_item(name=name)).name == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a" * 201,
        "   ",  # white space only
        "\u200b\u200d",  # zero-width characters only
        "\u3000",  # an ideographic space
        "two\nlines",
        "tab\there",
        "nul\x00",
        "del\x7f",
        "c1\x85control",
        "line\u2028separator",
    ],
)
def test_a_name_is_one_line_with_a_visible_character(name: str) -> None:
    assert [loc for loc, _ in _errors(ItemCreate, _item(name=name))] == [("name",)]


def test_an_empty_description_is_no_description() -> None:
    assert ItemCreate.model_validate(_item(description="")).description is None


@pytest.mark.parametrize("description", ["x\x00y", "x" * 10_001])
def test_bad_descriptions(description: str) -> None:
    assert [loc for loc, _ in _errors(ItemCreate, _item(description=description))] == [
        ("description",)
    ]


def test_a_description_may_hold_lines_and_up_to_ten_thousand_characters() -> None:
    text = "line one\nline two\r\n" + "x" * (10_000 - 20)
    assert ItemCreate.model_validate(_item(description=text)).description == text


@pytest.mark.parametrize("quantity", ["3", 3.0, True, -1, MAX_QUANTITY + 1, None])
def test_a_quantity_is_a_json_integer_from_zero_to_the_maximum(quantity: object) -> None:
    assert [loc for loc, _ in _errors(ItemCreate, _item(quantity=quantity))] == [("quantity",)]


def test_the_largest_quantity_and_price() -> None:
    item = ItemCreate.model_validate(_item(quantity=MAX_QUANTITY, price="9999999999.99"))
    assert (item.quantity, item.price) == (MAX_QUANTITY, MAX_PRICE)


def test_an_unknown_field_is_refused() -> None:
    assert _errors(ItemCreate, _item(colour="red")) == [
        (("colour",), "Extra inputs are not permitted")
    ]


def test_an_update_changes_only_the_fields_given() -> None:
    update = ItemUpdate.model_validate({"name": "New", "price": 2})
    assert update.changes() == {"name": "New", "price": Decimal("2.00")}
    assert ItemUpdate.model_validate({}).changes() == {}
    assert ItemUpdate.model_validate({"description": None}).changes() == {"description": None}


@pytest.mark.parametrize("field", ["sku", "name", "price"])
def test_an_update_may_not_null_a_required_field(field: str) -> None:
    assert _errors(ItemUpdate, {field: None}) == [((), f"{field} cannot be null")]


@pytest.mark.parametrize("quantity", [5, None, "5"])
def test_an_update_of_the_quantity_points_to_the_ledger(quantity: object) -> None:
    ((loc, message),) = _errors(ItemUpdate, {"quantity": quantity})
    assert loc == ("quantity",)
    assert "POST /items/{id}/adjustments" in message


# --- API key names ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ci", "alice", "ci-bot.1_x", "A" * 100])
def test_good_key_names(name: str) -> None:
    assert KeyCreate.model_validate({"name": name, "scopes": ["read"]}).name == name


@pytest.mark.parametrize("name", ["", "A" * 101, "a b", "a/b", "é", "ci\n", "ci:admin"])
def test_bad_key_names(name: str) -> None:
    assert [loc for loc, _ in _errors(KeyCreate, {"name": name, "scopes": []})] == [("name",)]


@pytest.mark.parametrize("scopes", [["root"], ["read", "write", "admin", "read"], "read", [None]])
def test_key_scopes_are_at_most_three_of_read_write_admin(scopes: object) -> None:
    assert all(loc[0] == "scopes" for loc, _ in _errors(KeyCreate, {"name": "k", "scopes": scopes}))


def test_a_key_body_with_an_unknown_field_is_refused() -> None:
    assert _errors(KeyCreate, {"name": "k", "scopes": [], "admin": True}) == [
        (("admin",), "Extra inputs are not permitted")
    ]
