"""The OpenAPI document says what the service does, in terms standard tools take as is.

(That every answer the tests see matches the document is checked for every test, by the
shared client: tests/support/openapi_check.py. That a generated client works:
tests/test_generated_client.py.)
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate

PROBLEM_REFS = {"#/components/schemas/Problem", "#/components/schemas/ValidationProblem"}


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)  # openapi-spec-validator: OpenAPI 3.1 and its JSON Schema dialect


def test_operation_ids_are_explicit_unique_and_readable(document: dict[str, Any]) -> None:
    ids = [operation.get("operationId") for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids)), sorted((i for i in ids if ids.count(i) > 1), key=str)
    for (method, path, _), operation_id in zip(operations(document), ids, strict=True):
        # camelCase words, not FastAPI's generated `create_item_items_post`.
        assert operation_id is not None, f"{method} {path} has no operationId"
        assert re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)*", operation_id), (method, path, operation_id)
    wanted = {
        ("GET", "/items"): "listItems",
        ("POST", "/items"): "createItem",
        ("GET", "/items/{item_id}"): "getItem",
        ("PATCH", "/items/{item_id}"): "updateItem",
        ("DELETE", "/items/{item_id}"): "deleteItem",
        ("POST", "/items/{item_id}/adjustments"): "createAdjustment",
        ("GET", "/items/{item_id}/adjustments"): "listAdjustments",
        ("POST", "/items/import"): "importItems",
        ("GET", "/items/export"): "exportItems",
        ("POST", "/keys"): "createKey",
        ("GET", "/keys"): "listKeys",
    }
    given = {
        (method, path): operation["operationId"] for method, path, operation in operations(document)
    }
    assert {key: given.get(key) for key in wanted} == wanted


def test_every_error_response_refers_to_the_problem_component(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert {"Problem", "ValidationProblem"} <= schemas.keys()
    assert schemas["Problem"]["required"] == ["type", "title", "status", "detail"]
    errors = 0
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            if not status.startswith(("4", "5")):
                continue
            errors += 1
            content = response["content"]
            assert list(content) == ["application/problem+json"], (method, path, status)
            ref = content["application/problem+json"]["schema"]
            expected = "ValidationProblem" if status == "422" else "Problem"
            assert ref == {"$ref": f"#/components/schemas/{expected}"}, (method, path, status)
    assert errors > 50
    # Nothing else spells out a problem: no copy of its members outside the components.
    paths = json.dumps(document["paths"])
    assert '"detail"' not in paths
    assert "HTTPValidationError" not in json.dumps(document)


def test_pages_are_typed(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    pages = {name: schema for name, schema in schemas.items() if name.startswith("Page_")}
    assert set(pages) == {
        "Page_ItemPublic_", "Page_AdjustmentPublic_", "Page_KeyPublic_",
        "Page_WebhookPublic_", "Page_AttemptPublic_",
    }  # fmt: skip
    for name, page in pages.items():
        item = name.removeprefix("Page_").removesuffix("_")
        assert page["type"] == "object"
        assert page["required"] == ["data", "next_cursor"]
        assert page["properties"]["data"] == {
            "type": "array",
            "items": {"$ref": f"#/components/schemas/{item}"},
            "title": "Data",
        }
        assert {"type": "null"} in page["properties"]["next_cursor"]["anyOf"]
        # Absent unless count=true: optional, never null.
        assert page["properties"]["total"]["type"] == "integer"
        assert "additionalProperties" not in page


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Validator:
    root = {**schema, "components": document["components"]}
    return jsonschema.Draft202012Validator(root)


@pytest.mark.parametrize("price", [19.99, 0.07, 1.15, 4.35, 0.29, 0, 9999999999.99, "19.99", "7"])
def test_standard_validators_take_every_price_the_service_takes(
    document: dict[str, Any], price: float | str
) -> None:
    item = {"sku": "A-1", "name": "A", "price": price}
    create = _validator(document, {"$ref": "#/components/schemas/ItemCreate"})
    assert list(create.iter_errors(item)) == []
    assert "multipleOf" not in json.dumps(document)


@pytest.mark.parametrize("price", ["19.999", "1e3", "-1", -0.01, "12,50", 10_000_000_000])
def test_standard_validators_refuse_prices_the_schema_can_tell_apart(
    document: dict[str, Any], price: float | str
) -> None:
    item = {"sku": "A-1", "name": "A", "price": price}
    create = _validator(document, {"$ref": "#/components/schemas/ItemCreate"})
    assert list(create.iter_errors(item)) != []


async def test_money_answers_are_strings_with_two_places(
    client: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    price = document["components"]["schemas"]["ItemPublic"]["properties"]["price"]
    assert price["type"] == "string"
    assert price["pattern"] == r"^\d{1,10}\.\d{2}$"
    created = await client.post("/items", json={"sku": "M-1", "name": "M", "price": 0.07})
    assert created.json()["price"] == "0.07"


def _headers(document: dict[str, Any], method: str, path: str, status: str) -> set[str]:
    return set(document["paths"][path][method]["responses"][status].get("headers", {}))


def test_promised_response_headers_are_declared(document: dict[str, Any]) -> None:
    assert {"Location", "ETag", "Idempotent-Replayed"} <= _headers(
        document, "post", "/items", "201"
    )
    assert "ETag" in _headers(document, "get", "/items/{item_id}", "200")
    assert "ETag" in _headers(document, "get", "/items/{item_id}", "304")
    assert "ETag" in _headers(document, "patch", "/items/{item_id}", "200")
    replayed = _headers(document, "post", "/items/{item_id}/adjustments", "201")
    assert "Idempotent-Replayed" in replayed
    assert "Idempotent-Replayed" in _headers(document, "post", "/items/import", "200")
    assert "Location" in _headers(document, "post", "/webhooks", "201")
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            headers = set(response.get("headers", {}))
            assert "X-Request-ID" in headers, (method, path, status)
            if "401" in operation["responses"]:  # needs a key: rate limited
                assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= headers
            if status in ("429", "503"):
                assert "Retry-After" in headers, (method, path, status)
    assert "RateLimit-Limit" not in _headers(document, "get", "/healthz", "200")


def test_the_import_body_is_declared_for_csv_and_ndjson(document: dict[str, Any]) -> None:
    body = document["paths"]["/items/import"]["post"]["requestBody"]
    assert body["required"] is True
    assert set(body["content"]) == {"text/csv", "application/x-ndjson"}
    for media_type, content in body["content"].items():
        assert content["schema"]["type"] == "string"
        assert content["schema"]["contentMediaType"] == media_type


def test_optional_parameters_are_plain_not_nullable(document: dict[str, Any]) -> None:
    seen = set()
    for method, path, operation in operations(document):
        for parameter in operation.get("parameters", []):
            seen.add(parameter["name"])
            assert "null" not in json.dumps(parameter["schema"]), (method, path, parameter)
    assert {"if-match", "if-none-match", "idempotency-key", "last-event-id", "cursor"} <= seen
    get_item = document["paths"]["/items/{item_id}"]["get"]["parameters"]
    if_none_match = next(p for p in get_item if p["name"] == "if-none-match")
    assert if_none_match["schema"]["type"] == "string"
    assert if_none_match["required"] is False


def test_rules_are_in_the_schema(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    webhook = schemas["WebhookCreate"]["properties"]
    url = _validator(document, webhook["url"])
    assert url.is_valid("https://example.com/hooks?x=1")
    assert not url.is_valid("ftp://example.com/")
    assert not url.is_valid("example.com")
    assert webhook["events"]["items"]["enum"] == [
        "item.created", "item.updated", "item.deleted", "stock.adjusted", "stock.low", "*",
    ]  # fmt: skip
    types = next(
        p for p in document["paths"]["/events"]["get"]["parameters"] if p["name"] == "types"
    )
    pattern = _validator(document, types["schema"])
    assert pattern.is_valid("item.created")
    assert pattern.is_valid("item.created, stock.adjusted")
    assert pattern.is_valid("stock.low")
    assert not pattern.is_valid("item.exploded")
    assert not pattern.is_valid("")
    assert schemas["KeyCreate"]["properties"]["scopes"]["items"]["enum"] == [
        "read", "write", "admin",
    ]  # fmt: skip


async def test_the_events_types_pattern_is_the_service_rule(
    client: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    types = next(
        p for p in document["paths"]["/events"]["get"]["parameters"] if p["name"] == "types"
    )
    pattern = _validator(document, types["schema"])
    # What the schema refuses, the service refuses (422 before the stream opens).
    for refused in ("", ",", "item.created,nope", "ITEM.CREATED"):
        assert not pattern.is_valid(refused)
        response = await client.get("/events", params={"types": refused})
        assert response.status_code == 422, (refused, response.text)
