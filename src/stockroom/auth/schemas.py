"""Wire schemas of API keys."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "KEY_NAME_MAX_LENGTH",
    "KEY_NAME_PATTERN",
    "KEY_NAME_RULE",
    "CurrentKey",
    "KeyCreate",
    "KeyCreated",
    "KeyPublic",
    "ScopeName",
    "StreamTokenCreated",
]

ScopeName = Literal["read", "write", "admin"]
# The one rule for key names, of POST /keys, DELETE /keys/{name} and `stockroom apikey`.
KEY_NAME_MAX_LENGTH = 100
KEY_NAME_PATTERN = r"^[A-Za-z0-9._-]+$"
KEY_NAME_RULE = f"1 to {KEY_NAME_MAX_LENGTH} characters, each a letter, a digit, '.', '_' or '-'"
KeyName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=KEY_NAME_MAX_LENGTH, pattern=KEY_NAME_PATTERN),
]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: KeyName
    scopes: list[ScopeName] = Field(max_length=3)


class KeyPublic(BaseModel):
    name: str
    scopes: list[ScopeName]
    created_at: dt.datetime
    revoked_at: dt.datetime | None


class KeyCreated(BaseModel):
    name: str
    scopes: list[ScopeName]
    key: str = Field(description="The secret; shown only in this answer.")
    created_at: dt.datetime


class StreamTokenCreated(BaseModel):
    token: str = Field(
        description="Pass as `GET /events?token=...`; it opens nothing else. Not an API key."
    )
    expires_at: dt.datetime = Field(
        description="After this the token opens nothing, and a stream opened with it ends."
    )


class CurrentKey(BaseModel):
    name: str | None = Field(
        description="The key's name; null when authentication is off (STOCKROOM_AUTH=off)."
    )
    scopes: list[ScopeName] = Field(
        description="Every scope the key grants, implied ones included (`admin` grants "
        "`read`, `write` and `admin`), in that order."
    )
