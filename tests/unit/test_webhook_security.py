"""Webhook secrets, Standard Webhooks signatures and the address guard
(stockroom.webhooks.security), checked against the `standardwebhooks` reference package."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from stockroom.webhooks.schemas import WebhookCreate
from stockroom.webhooks.security import (
    SECRET_PATTERN,
    SECRET_PREFIX,
    AddressRefusedError,
    InvalidSecretError,
    check_host,
    generate_secret,
    refusal,
    secret_key,
    sign,
)

BODY = b'{"id":"evt-1","type":"item.created","data":{"sku":"A"}}'


def _secret(size: int) -> str:
    return SECRET_PREFIX + base64.b64encode(bytes(range(size))).decode()


def _headers(message_id: str, timestamp: int, signature: str) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def test_a_generated_secret_is_whsec_and_32_random_bytes() -> None:
    first, second = generate_secret(), generate_secret()
    assert first.startswith(SECRET_PREFIX)
    assert len(secret_key(first)) == 32
    assert first != second


@pytest.mark.parametrize("size", [24, 32, 64])
def test_our_signature_verifies_with_the_standard_webhooks_library(size: int) -> None:
    secret = _secret(size)
    now = int(time.time())
    signature = sign(secret_key(secret), "evt-1", now, BODY)
    assert signature.startswith("v1,")
    parsed = Webhook(secret).verify(BODY, _headers("evt-1", now, signature))
    assert parsed["data"] == {"sku": "A"}


def test_our_signature_is_the_one_the_library_computes() -> None:
    secret = _secret(32)
    at = 1_700_000_000
    ours = sign(secret_key(secret), "evt-1", at, BODY)
    theirs = Webhook(secret).sign("evt-1", dt.datetime.fromtimestamp(at, dt.UTC), BODY.decode())
    assert ours == theirs


@pytest.mark.parametrize(
    ("message_id", "shift", "body"),
    [
        ("evt-2", 0, BODY),  # another event's id
        ("evt-1", 1, BODY),  # another time
        ("evt-1", 0, BODY.replace(b'"A"', b'"B"')),  # another body
    ],
)
def test_a_signature_does_not_verify_anything_else(
    message_id: str, shift: int, body: bytes
) -> None:
    secret = _secret(32)
    now = int(time.time())
    signature = sign(secret_key(secret), "evt-1", now, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, _headers(message_id, now + shift, signature))


def test_a_signature_made_with_another_secret_does_not_verify() -> None:
    now = int(time.time())
    signature = sign(secret_key(_secret(32)), "evt-1", now, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, _headers("evt-1", now, signature))


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        (base64.b64encode(bytes(32)).decode(), "a secret starts with whsec_"),
        ("WHSEC_" + base64.b64encode(bytes(32)).decode(), "a secret starts with whsec_"),
        ("whsec_not base64!", "followed by base64"),
        ("whsec_" + base64.urlsafe_b64encode(b"\xfb" * 30).decode(), "followed by base64"),
        ("whsec_", "24 to 64 bytes, not 0"),
        (_secret(23), "24 to 64 bytes, not 23"),
        (_secret(65), "24 to 64 bytes, not 65"),
    ],
)
def test_a_secret_in_another_form_is_refused_with_the_reason(secret: str, reason: str) -> None:
    with pytest.raises(InvalidSecretError, match=reason):
        secret_key(secret)
    with pytest.raises(ValidationError, match=reason):
        WebhookCreate(url="https://example.com/hook", events=["*"], secret=secret)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped: the IPv4 address decides
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("fd12:3456::1", "private"),
        ("100.64.0.1", "not public"),  # carrier-grade NAT
        ("8.8.8.8", None),
        ("::ffff:8.8.8.8", None),
        ("2001:4860:4860::8888", None),
    ],
)
def test_which_addresses_webhooks_may_call(address: str, kind: str | None) -> None:
    assert refusal(ipaddress.ip_address(address)) == kind


async def test_an_address_literal_is_checked_without_resolving_it() -> None:
    with pytest.raises(AddressRefusedError, match=r"^127\.0\.0\.1 is a loopback address$"):
        await check_host("127.0.0.1", 80, allow_private=False)
    with pytest.raises(AddressRefusedError, match=r"^::1 is a loopback address$"):
        await check_host("[::1]", 443, allow_private=False)
    assert await check_host("8.8.8.8", 443, allow_private=False) == [
        ipaddress.ip_address("8.8.8.8")
    ]
    # STOCKROOM_WEBHOOK_ALLOW_PRIVATE: the address is given back unchecked.
    assert await check_host("10.0.0.1", 80, allow_private=True) == [
        ipaddress.ip_address("10.0.0.1")
    ]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/hook", "a webhook URL is http:// or https://"),
        ("example.com/hook", "a webhook URL is http:// or https://"),
        ("https:///hook", "a webhook URL needs a host"),
        ("http://:80/hook", "a webhook URL needs a host"),
        ("http://[::1/hook", "not a URL"),
        ("https://user:pw@example.com/hook", "not before the host"),
        ("https://example.com/hook#part", "no #fragment"),
    ],
)
def test_a_webhook_url_is_http_or_https_with_a_host_and_no_credentials(
    url: str, reason: str
) -> None:
    with pytest.raises(ValidationError, match=reason):
        WebhookCreate(url=url, events=["*"])


def test_webhook_events_are_deduplicated_and_star_stands_alone() -> None:
    events = ["stock.adjusted", "item.created", "stock.adjusted"]
    created = WebhookCreate(url="https://example.com/h", events=events)
    assert created.events == ["stock.adjusted", "item.created"]
    with pytest.raises(ValidationError, match="give it alone"):
        WebhookCreate(url="https://example.com/h", events=["*", "item.created"])


@given(st.binary(min_size=0, max_size=80))
def test_the_documented_secret_pattern_is_the_rule_the_service_applies(key: bytes) -> None:
    """A client that checks a secret against the OpenAPI document's pattern accepts exactly
    the secrets the service accepts: the base64 of 24 to 64 bytes, padded."""
    secret = SECRET_PREFIX + base64.b64encode(key).decode()
    assert bool(re.fullmatch(SECRET_PATTERN, secret)) == (24 <= len(key) <= 64)
    assert bool(re.fullmatch(SECRET_PATTERN, secret)) == _accepted(secret)


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_" + "A" * 32 + "=",  # padding without a group it completes
        "whsec_" + "A" * 31,  # not a whole number of groups
        "whsec_" + "A" * 30 + "==",  # 23 bytes
        "whsec_" + "A" * 32 + "A===",
        "whsec_" + "A-" * 16,  # URL-safe alphabet
        "whsec_ " + "A" * 32,
        "WHSEC_" + "A" * 32,
    ],
)
def test_the_documented_secret_pattern_refuses_what_the_service_refuses(secret: str) -> None:
    assert re.fullmatch(SECRET_PATTERN, secret) is None
    assert not _accepted(secret)


def test_the_openapi_document_carries_the_secret_pattern() -> None:
    schema = WebhookCreate.model_json_schema()["properties"]["secret"]
    patterns = [branch.get("pattern") for branch in schema["anyOf"]]
    assert SECRET_PATTERN in patterns


def _accepted(secret: str) -> bool:
    try:
        WebhookCreate(url="https://example.com/hook", events=["*"], secret=secret)
    except ValidationError:
        return False
    return True
