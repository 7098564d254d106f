"""Wire schemas of items: what clients send and receive (storage lives in ``models``)."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Sequence
from decimal import Decimal
from operator import attrgetter
from typing import Annotated, Any, Literal

import orjson
from fastapi import Path, Query
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from stockroom.items.models import AdjustmentRow, ItemRow, Summary

__all__ = [
    "ADJUSTMENT_FIELDS",
    "ITEM_FIELDS",
    "MAX_PRICE",
    "NO_NUL_PATTERN",
    "SEARCH_PATTERN",
    "SORT_KEYS",
    "AdjustmentPublic",
    "CountMode",
    "Description",
    "ItemCreate",
    "ItemId",
    "ItemPublic",
    "ItemSummary",
    "ItemUpdate",
    "Money",
    "Name",
    "Quantity",
    "ReorderPoint",
    "Sku",
    "SortKey",
    "adjustment_json",
    "adjustments_json",
    "item_json",
    "item_wire",
    "items_json",
    "money_text",
    "summary_json",
]

MAX_PRICE = Decimal("9999999999.99")
MAX_QUANTITY = 2_147_483_647
SORT_KEYS = ("id", "name", "price", "created_at", "updated_at")
SortKey = Literal[
    "id", "-id", "name", "-name", "price", "-price",
    "created_at", "-created_at", "updated_at", "-updated_at",
]  # fmt: skip

# `count`: true (a number of matches, exact where that is cheap, else an estimate the
# envelope marks with "total_exact": false), exact (every match counted), false (none).
CountMode = Annotated[
    bool | Literal["exact"],
    Query(
        description="true: add `total`, the number of matches, and `total_exact`. The number "
        "is exact up to 1,000 matches and for filters of stock alone; above that on "
        "PostgreSQL an estimate from a sample (`total_exact`: false). `exact`: always count "
        "every match (slower on large catalogues)."
    ),
]

_MONEY_PATTERN = r"^\d{1,10}\.\d{2}$"
_MONEY_TEXT = re.compile(r"\d{1,10}(\.\d{1,2})?", re.ASCII)
# No `multipleOf: 0.01` on the number: in binary floating point 19.99 / 0.01 is not a whole
# number, so standard validators would refuse prices the service takes. The two-places rule
# is the string's pattern, and for a number it is said in words (more places: a 422).
_MONEY_INPUT_SCHEMA = {
    "anyOf": [
        {"type": "number", "minimum": 0, "maximum": 9999999999.99},
        {"type": "string", "pattern": r"^\d{1,10}(\.\d{1,2})?$"},
    ],
    "description": "Amount from 0 to 9999999999.99 with at most two decimal places, as a "
    'string ("19.99", the exact form) or a JSON number (19.99); more places are a 422. '
    'Answers always give a string with two places ("19.90").',
    "examples": ["49.90"],
}


def _plain_number(value: Any) -> Any:
    """Money as text is plain ASCII digits: no exponent, no other scripts' digits, no "_"."""
    if isinstance(value, str) and not _MONEY_TEXT.fullmatch(value):
        raise PydanticCustomError("money", "must be digits with at most two decimals, e.g. 12.50")
    return value


def _two_places(value: Decimal) -> Decimal:
    if not value.is_finite():
        raise PydanticCustomError("money", "must be a finite amount")
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -2:
        raise PydanticCustomError("money", "must have at most two decimal places")
    return value.quantize(Decimal("0.01"))


# Money in: a JSON number or a string, 0.00 to 9999999999.99, at most two places.
# Money out: a string with exactly two places ("12.50").
Money = Annotated[
    Decimal,
    BeforeValidator(_plain_number),
    Field(ge=0, le=MAX_PRICE, allow_inf_nan=False),
    AfterValidator(_two_places),
    PlainSerializer(lambda value: f"{value:.2f}", return_type=str, when_used="json"),
    WithJsonSchema(_MONEY_INPUT_SCHEMA, mode="validation"),
]
MoneyOut = Annotated[
    Decimal,
    PlainSerializer(lambda value: f"{value:.2f}", return_type=str),
    WithJsonSchema({"type": "string", "pattern": _MONEY_PATTERN, "examples": ["49.90"]}),
]

Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
# Names are one line of text: no control characters (C0, DEL, C1) nor line separators.
NAME_PATTERN = (
    r"^[^\x00-\x1F\x7F-\x9F\u2028\u2029]*[^\s\x00-\x1F\x7F-\x9F\u2028\u2029]"
    r"[^\x00-\x1F\x7F-\x9F\u2028\u2029]*$"
)
# What a search may contain: no control characters, and no U+FFFD (what an undecodable
# percent-escape in the URL turns into).
SEARCH_PATTERN = r"^[^\x00-\x1F\x7F-\x9F\uFFFD]*$"
# Invisible: white space, separators, format characters (zero-width space, joiners, ...).
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Cn", "Zs", "Zl", "Zp"})
# Any text but NUL, which PostgreSQL cannot store in a text column.
NO_NUL_PATTERN = r"^[^\x00]*$"


# Printable ASCII but the space: one of these makes a name visible at once (the check of every
# character below is the slow way to the same answer; imports run it a million times).
_ASCII_VISIBLE = re.compile(r"[!-~]")


def _visible(name: str) -> str:
    if _ASCII_VISIBLE.search(name) is None and all(
        unicodedata.category(char) in _INVISIBLE for char in name
    ):
        raise PydanticCustomError("name_invisible", "must contain a visible character")
    return name


Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, pattern=NAME_PATTERN),
    AfterValidator(_visible),
]
Description = Annotated[str, StringConstraints(max_length=10_000, pattern=NO_NUL_PATTERN)]


def _empty_is_none(value: Any) -> Any:
    return None if value == "" else value


# An empty description is no description: stored and answered as null. (CSV cannot tell
# the two apart, and an export must import back unchanged.)
OptionalDescription = Annotated[Description | None, BeforeValidator(_empty_is_none)]
# Strict: a JSON integer, not "3", 3.0 or true.
# An item id in a URL path (the routers of items and of the ledger): 64-bit, as items.id is
# (bigint on PostgreSQL since migration 0007, INTEGER on SQLite).
ItemId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The item's id.")]

Quantity = Annotated[int, Strict(), Field(ge=0, le=MAX_QUANTITY)]
# The quantity at or below which an item is low (a JSON integer, as quantity is).
ReorderPoint = Annotated[
    int,
    Strict(),
    Field(
        ge=0,
        le=MAX_QUANTITY,
        description="The item is low when its quantity is at or below this; null: never.",
    ),
]


class ItemCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)

    sku: Sku
    name: Name
    description: OptionalDescription = None
    price: Money
    quantity: Quantity = 0
    reorder_point: ReorderPoint | None = None


def _not_nullable(schema: dict[str, Any]) -> None:
    """The schema of ``X | None`` as X's: the field may be left out, not sent as null."""
    choices = [choice for choice in schema.pop("anyOf", []) if choice != {"type": "null"}]
    schema.pop("default", None)
    if len(choices) == 1:
        schema.update({**choices[0], **schema})
    elif choices:
        schema["anyOf"] = choices


class ItemUpdate(BaseModel):
    """A partial update; fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    # Optional, but not nullable in the schema; null is a 422 (`_no_null_for_required`).
    # (`X | None`, not `X | SkipJsonSchema[None]`: that is a union whose branch names,
    # validator function names, would show in the 422's `loc` and `detail`.)
    sku: Sku | None = Field(None, json_schema_extra=_not_nullable)
    name: Name | None = Field(None, json_schema_extra=_not_nullable)
    description: OptionalDescription = None
    price: Money | None = Field(None, json_schema_extra=_not_nullable)
    # null clears it (as description).
    reorder_point: ReorderPoint | None = None

    # Not part of the schema: present only to answer a clear 422 that points to the ledger.
    quantity: SkipJsonSchema[Any] = Field(None, exclude=True)

    @field_validator("quantity")
    @classmethod
    def _quantity_is_not_patchable(cls, _value: Any) -> Any:
        raise PydanticCustomError(
            "quantity_not_patchable",
            "quantity cannot be set directly; change stock with POST /items/{id}/adjustments",
        )

    @model_validator(mode="after")
    def _no_null_for_required(self) -> ItemUpdate:
        for field in ("sku", "name", "price"):
            if field in self.model_fields_set and getattr(self, field) is None:
                raise PydanticCustomError(
                    "not_nullable", "{field} cannot be null", {"field": field}
                )
        return self

    def changes(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in self.model_fields_set - {"quantity"}}


class ItemPublic(BaseModel):
    """An item as the API answers it (the schema; answers are written by :func:`item_json`)."""

    id: int
    sku: str
    name: str
    description: str | None
    price: MoneyOut
    quantity: int
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    # Last: the export's CSV columns follow these fields, and the columns before it keep
    # their places.
    reorder_point: int | None


class ItemSummary(BaseModel):
    """The catalogue at a glance (GET /items/summary)."""

    items: int = Field(description="How many items there are.")
    units: int = Field(description="Units in stock: the sum of every item's quantity.")
    value: Annotated[
        str,
        WithJsonSchema({"type": "string", "pattern": r"^\d+\.\d{2}$", "examples": ["1249.50"]}),
    ] = Field(description="Stock value, the sum of price times quantity (no upper bound).")
    out_of_stock: int = Field(description="Items whose quantity is 0.")
    low_stock: int = Field(description="Items at or below their reorder point.")


class AdjustmentPublic(BaseModel):
    """A ledger row as the API answers it (written by :func:`adjustment_json`)."""

    id: int
    item_id: int
    delta: int
    reason: str | None
    quantity_after: int
    created_at: dt.datetime


def money_text(cents: int) -> str:
    """Whole cents as the API writes money: ``"12.50"``."""
    return f"{cents // 100}.{cents % 100:02d}"


# The wire form of an item and of an adjustment, field by field, in the schemas' order: the
# one serialisation that the API's answers, the events and the export share. The PostgreSQL
# import builds the same JSON in SQL from these names (items/_postgresql.py), and tests hold
# all of them to the schemas above. Every field is the row's attribute of the same name,
# except an item's price (whole cents in the row, text on the wire).
ITEM_FIELDS: tuple[str, ...] = tuple(ItemPublic.model_fields)
ADJUSTMENT_FIELDS: tuple[str, ...] = tuple(AdjustmentPublic.model_fields)
# Each row's values in one call (C, not a loop in Python: a page of 50 items is 50 of these).
_item_values = attrgetter(*("price_cents" if name == "price" else name for name in ITEM_FIELDS))
_adjustment_values = attrgetter(*ADJUSTMENT_FIELDS)
_JSON_OPTIONS = orjson.OPT_UTC_Z


def item_wire(item: ItemRow) -> dict[str, Any]:
    """The item's wire fields (times as ``datetime``: orjson writes them)."""
    wire = dict(zip(ITEM_FIELDS, _item_values(item), strict=True))
    wire["price"] = money_text(wire["price"])  # read from price_cents
    return wire


def item_json(item: ItemRow) -> bytes:
    return orjson.dumps(item_wire(item), option=_JSON_OPTIONS)


def items_json(items: Sequence[ItemRow]) -> bytes:
    """A JSON array of items, in one serialisation."""
    return orjson.dumps([item_wire(item) for item in items], option=_JSON_OPTIONS)


def summary_json(summary: Summary) -> bytes:
    return orjson.dumps(
        {
            "items": summary.items,
            "units": summary.units,
            "value": money_text(summary.value_cents),
            "out_of_stock": summary.out_of_stock,
            "low_stock": summary.low_stock,
        }
    )


def adjustment_json(adjustment: AdjustmentRow) -> bytes:
    return orjson.dumps(
        dict(zip(ADJUSTMENT_FIELDS, _adjustment_values(adjustment), strict=True)),
        option=_JSON_OPTIONS,
    )


def adjustments_json(adjustments: Sequence[AdjustmentRow]) -> bytes:
    """A JSON array of ledger rows, in one serialisation."""
    return orjson.dumps(
        [dict(zip(ADJUSTMENT_FIELDS, _adjustment_values(a), strict=True)) for a in adjustments],
        option=_JSON_OPTIONS,
    )
