"""Wire schemas of stock adjustments."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints, field_validator
from pydantic_core import PydanticCustomError

from stockroom.items.schemas import NO_NUL_PATTERN

__all__ = ["MAX_DELTA", "AdjustmentCreate"]

MAX_DELTA = 1_000_000_000

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
