"""What an import reads (one row) and what it answers (the report)."""

from __future__ import annotations

import datetime as dt
from typing import NotRequired

from pydantic import BaseModel, ConfigDict, Field, with_config

# pydantic reads TypedDicts from typing_extensions only, on Python < 3.12.
from typing_extensions import TypedDict

from stockroom.items.schemas import (
    Money,
    Name,
    OptionalDescription,
    Quantity,
    ReorderPoint,
    Sku,
)

__all__ = ["MAX_REPORTED_ERRORS", "ExportTokenCreated", "ImportError_", "ImportReport", "ImportRow"]

MAX_REPORTED_ERRORS = 100


# A TypedDict, not a model: a batch of rows is validated in one call and comes back as
# plain dicts, several times faster than a model instance per row; the rules are the same
# annotated types as POST /items uses.
@with_config(ConfigDict(extra="forbid"))
class ImportRow(TypedDict):
    """One item of a file: the rules of POST /items. A missing quantity leaves an existing
    item's stock as it is (and is 0 for a new one); so does a missing reorder point (null
    for a new one), while a null one clears it."""

    sku: Sku
    name: Name
    description: NotRequired[OptionalDescription]
    price: Money
    quantity: NotRequired[Quantity | None]
    reorder_point: NotRequired[ReorderPoint | None]


class ImportError_(BaseModel):  # noqa: N801 - "ImportError" is a builtin
    line: int = Field(description="1-based line of the file where the row starts.")
    field: str | None = Field(
        description="The column (CSV) or key (NDJSON) at fault; null when the line itself "
        "cannot be read (not valid JSON, a wrong number of cells, too long, not UTF-8)."
    )
    message: str


class ImportReport(BaseModel):
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    errors: list[ImportError_] = Field(
        default_factory=list, description="The first 100 problems, by line."
    )

    def fail(self, line: int, message: str, field: str | None = None) -> None:
        self.failed += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(ImportError_(line=line, field=field, message=message))


class ExportTokenCreated(BaseModel):
    token: str = Field(
        description="Pass as `GET /items/export?token=...` (a plain download link); it opens "
        "nothing else. Not an API key."
    )
    expires_at: dt.datetime = Field(
        description="After this the token opens nothing; a download it started runs to its end."
    )
