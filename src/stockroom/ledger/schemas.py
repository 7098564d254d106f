"""Wire schemas of stock adjustments."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints, field_validator
from pydantic_core import PydanticCustomError

from stockroom.items.schemas import NO_NUL_PATTERN

__all__ = ["HISTORY_LIMIT", "MAX_DELTA", "AdjustmentCreate", "QuantityHistoryPublic"]

MAX_DELTA = 1_000_000_000
HISTORY_LIMIT = 50_000

Reason = Annotated[str, StringConstraints(max_length=200, pattern=NO_NUL_PATTERN)]


class AdjustmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delta: Annotated[int, Strict()] = Field(
        ge=-MAX_DELTA,
        le=MAX_DELTA,
        description="Change of quantity: positive adds stock, negative removes it; not 0.",
        json_schema_extra={"not": {"const": 0}},
    )
    reason: Reason | None = None

    @field_validator("delta")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise PydanticCustomError("delta_zero", "delta must not be 0")
        return value


class QuantityHistoryPublic(BaseModel):
    """An item's quantity over time, as columns (a chart's series), oldest first."""

    times: list[float] = Field(
        description="When each change was made: Unix time in seconds (fraction: microseconds)."
    )
    quantities: list[int] = Field(description="The quantity after each change (`quantity_after`).")
    last_id: int | None = Field(
        description="The id of the newest ledger row included; null when there is none. "
        "Changes after it (e.g. `stock.adjusted` events with a greater id) are newer."
    )
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the older part of the history; null when this "
        "answer reaches the item's first change."
    )
