"""Wire schemas of webhooks and their delivery attempts."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from stockroom.webhooks.security import SECRET_PATTERN, InvalidSecretError, secret_key

__all__ = [
    "AttemptPublic",
    "WebhookCreate",
    "WebhookCreated",
    "WebhookPublic",
    "WebhookUrl",
]

EventName = Literal[
    "item.created", "item.updated", "item.deleted", "stock.adjusted", "stock.low", "*"
]
DeliveryStatus = Literal["pending", "delivered", "failed"]


def _http_url(value: str) -> str:
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise ValueError("not a URL") from None
    if url.scheme not in ("http", "https"):
        raise ValueError("a webhook URL is http:// or https://")
    if not url.host:
        raise ValueError("a webhook URL needs a host")
    if url.userinfo:
        raise ValueError("put credentials in the URL's path or query, not before the host")
    if url.fragment:
        raise ValueError("a webhook URL has no #fragment")
    return value


# The schema's pattern says "http(s)://, then a host"; `_http_url` checks the rest (no
# credentials, no #fragment), and the service whether the host is private.
_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]+(?:[/?#][\s\S]*)?$"
WebhookUrl = Annotated[
    str,
    Field(min_length=1, max_length=2048, json_schema_extra={"pattern": _URL_PATTERN}),
    AfterValidator(_http_url),
]

# The pattern only in the document: `_secret_form` checks the same rule with a reason.
WebhookSecret = Annotated[str, Field(max_length=100, json_schema_extra={"pattern": SECRET_PATTERN})]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: WebhookUrl
    events: list[EventName] = Field(
        min_length=1, max_length=5, description='Event types to send, or `["*"]` for all.'
    )
    secret: WebhookSecret | None = Field(
        None, description="`whsec_` + base64 of 24 to 64 random bytes; generated when absent."
    )

    @field_validator("events")
    @classmethod
    def _star_alone(cls, value: list[str]) -> list[str]:
        if "*" in value and len(set(value)) > 1:
            raise ValueError('"*" already means every event; give it alone')
        return sorted(set(value), key=value.index)

    @field_validator("secret")
    @classmethod
    def _secret_form(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                secret_key(value)
            except InvalidSecretError as exc:
                raise ValueError(str(exc)) from None
        return value


class WebhookPublic(BaseModel):
    id: str
    url: str
    events: list[EventName]
    created_at: dt.datetime


class WebhookCreated(WebhookPublic):
    secret: str = Field(description="The signing secret; shown only in this answer.")


class AttemptPublic(BaseModel):
    id: int
    event_id: str
    type: str = Field(description="The event's type.")
    attempt: int = Field(description="1 for the first try of this event, 2 for the next...")
    status: DeliveryStatus = Field(
        description="The delivery's state after this attempt: `delivered`, `pending` (will "
        "be retried at `next_attempt_at`) or `failed` (given up)."
    )
    response_status: int | None = Field(description="The receiver's HTTP status, if any.")
    error: str | None = Field(description="Why no answer came (timeout, refused, ...).")
    duration_ms: int
    next_attempt_at: dt.datetime | None
    created_at: dt.datetime
