"""Bad input over HTTP: a clear 4xx problem+json, never a 500, and nothing stored or changed.

Runs on both backends. Request bodies are often sent as raw bytes, because a JSON library on
the client side would refuse (or repair) most of what is tested here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support.items import ItemFactory
from tests.support.problems import problem

JSON = {"content-type": "application/json"}
VALID: dict[str, Any] = {"sku": "OK-1", "name": "Widget", "price": "1.00", "quantity": 1}
LIMIT = 1_048_576  # the default STOCKROOM_MAX_BODY_BYTES
TEN_MB = 10 * 1024 * 1024


def client_error(response: httpx.Response) -> dict[str, Any]:
    """A 400 or 422 problem, for input where either is a fair answer."""
    assert response.status_code in (400, 422), response.text
    return problem(response, response.status_code)


def field_errors(body: dict[str, Any]) -> list[list[Any]]:
    """The ``loc`` of each validation error, cut to ``[where, field]``."""
    return [error["loc"][:2] for error in body["errors"]]


async def assert_nothing_stored(client: httpx.AsyncClient) -> None:
    response = await client.get("/items")
    assert response.status_code == 200
    assert response.json()["data"] == []


async def assert_unchanged(client: httpx.AsyncClient, item: dict[str, Any]) -> None:
    response = await client.get(f"/items/{item['id']}")
    assert response.status_code == 200
    assert response.json() == item


async def post_raw(client: httpx.AsyncClient, raw: bytes) -> httpx.Response:
    return await client.post("/items", content=raw, headers=JSON)


def item_with(field: str, literal: bytes) -> bytes:
    """A valid item's JSON, with ``field`` set to the raw JSON ``literal``."""
    others = {key: value for key, value in VALID.items() if key != field}
    return json.dumps(others).encode()[:-1] + b', "' + field.encode() + b'": ' + literal + b"}"


# --- malformed JSON -------------------------------------------------------------------

MALFORMED = [
    pytest.param(b'{"sku": "A", "name": "a", "price": 1', id="truncated"),
    pytest.param(b'{"sku": "A", "name": "a", "price": "1.00', id="truncated-in-string"),
    pytest.param(b'{"sku": "A", "name": "a", "price": 1,}', id="trailing-comma"),
    pytest.param(b"{'sku': 'A', 'name': 'a', 'price': 1}", id="single-quotes"),
    pytest.param(b"sku=A&name=a&price=1", id="form-encoded"),
    pytest.param(b"hello", id="not-json"),
    pytest.param(b"{} {}", id="two-documents"),
]


@pytest.mark.parametrize("raw", MALFORMED)
async def test_malformed_json_is_422(client: httpx.AsyncClient, raw: bytes) -> None:
    # docs/api.md: a body that is not valid JSON is 422 with this one error.
    body = problem(await post_raw(client, raw), 422)
    assert body["errors"] == [{"loc": ["body"], "msg": "The body is not valid JSON."}]
    await assert_nothing_stored(client)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'[{"sku": "A", "name": "a", "price": 1}]', id="array-of-item"),
        pytest.param(b'"an item"', id="string"),
        pytest.param(b"42", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(b"true", id="boolean"),
    ],
)
async def test_body_that_is_not_an_object_is_422(client: httpx.AsyncClient, raw: bytes) -> None:
    body = problem(await post_raw(client, raw), 422)
    assert body["errors"][0]["loc"] == ["body"]
    await assert_nothing_stored(client)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"[" * 100_000, id="deeply-nested-arrays"),
        pytest.param(b'{"a":' * 50_000, id="deeply-nested-objects"),
        # Python refuses to read integers of more than 4300 digits.
        pytest.param(
            b'{"sku": "A", "name": "a", "price": 1, "quantity": ' + b"9" * 5000 + b"}",
            id="5000-digit-integer",
        ),
    ],
)
async def test_pathological_json_is_a_problem_not_a_500(
    client: httpx.AsyncClient, raw: bytes
) -> None:
    client_error(await post_raw(client, raw))
    await assert_nothing_stored(client)


# --- wrong types ----------------------------------------------------------------------

WRONG_TYPES = [
    ("sku", 123),
    ("sku", True),
    ("sku", None),
    ("sku", ["A"]),
    ("sku", {"code": "A"}),
    ("name", 123),
    ("name", False),
    ("name", None),
    ("name", ["Widget"]),
    ("name", {"en": "Widget"}),
    ("description", 5),
    ("description", True),
    ("description", ["d"]),
    ("description", {"text": "d"}),
    ("price", []),
    ("price", {"amount": 1}),
    ("price", False),
    ("price", ""),
    ("price", "1,00"),
    ("price", "1.00 EUR"),
    ("quantity", "ten"),
    ("quantity", "1.5"),
    ("quantity", 1.5),
    ("quantity", None),
    ("quantity", []),
    ("quantity", {"n": 1}),
]


@pytest.mark.parametrize(("field", "value"), WRONG_TYPES)
async def test_wrong_type_is_422_naming_the_field(
    client: httpx.AsyncClient, field: str, value: object
) -> None:
    response = await client.post("/items", json={**VALID, field: value})
    body = problem(response, 422)
    assert ["body", field] in field_errors(body)
    await assert_nothing_stored(client)


@pytest.mark.parametrize(
    "value", [True, False, "3", 3.0, 1e3], ids=["true", "false", "string", "3.0", "1e3"]
)
async def test_quantity_must_be_a_json_integer(client: httpx.AsyncClient, value: object) -> None:
    # docs/api.md: `quantity` must be a JSON integer: "3", 3.0 and true are 422.
    response = await client.post("/items", json={**VALID, "quantity": value})
    body = problem(response, 422)
    assert ["body", "quantity"] in field_errors(body)
    await assert_nothing_stored(client)


@pytest.mark.parametrize(
    "price",
    [
        pytest.param("1e2", id="exponent"),
        pytest.param("1.5E1", id="exponent-upper"),
        pytest.param("\u0661\u0662", id="arabic-indic-digits"),
        pytest.param("\uff11\uff12", id="fullwidth-digits"),
        pytest.param("1_000", id="underscore"),
    ],
)
async def test_money_string_outside_the_documented_form_is_422(
    client: httpx.AsyncClient, price: str
) -> None:
    body = problem(await client.post("/items", json={**VALID, "price": price}), 422)
    assert ["body", "price"] in field_errors(body)
    await assert_nothing_stored(client)


# --- out-of-range numbers -------------------------------------------------------------

OUT_OF_RANGE = [
    pytest.param("quantity", b"-1", id="quantity--1"),
    pytest.param("quantity", b"2147483648", id="quantity-2**31"),
    pytest.param("quantity", b"1" + b"0" * 30, id="quantity-10**30"),
    pytest.param("quantity", b"-1" + b"0" * 30, id="quantity--10**30"),
    pytest.param("quantity", b"1e400", id="quantity-1e400"),
    pytest.param("price", b"10000000000", id="price-10**10"),
    pytest.param("price", b'"10000000000"', id="price-10**10-string"),
    pytest.param("price", b"9999999999.991", id="price-max-plus-a-fraction"),
    pytest.param("price", b"1" + b"0" * 30, id="price-10**30"),
    pytest.param("price", b"1e400", id="price-1e400"),
    pytest.param("price", b"-0.01", id="price-negative"),
]


@pytest.mark.parametrize(("field", "literal"), OUT_OF_RANGE)
async def test_out_of_range_number_is_422(
    client: httpx.AsyncClient, field: str, literal: bytes
) -> None:
    body = problem(await post_raw(client, item_with(field, literal)), 422)
    assert ["body", field] in field_errors(body)
    await assert_nothing_stored(client)


async def test_largest_quantity_and_price_are_accepted(client: httpx.AsyncClient) -> None:
    body = {**VALID, "quantity": 2**31 - 1, "price": "9999999999.99"}
    response = await client.post("/items", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["quantity"] == 2**31 - 1
    assert response.json()["price"] == "9999999999.99"


# --- bodies over the limit ------------------------------------------------------------


async def ten_megabytes() -> AsyncIterator[bytes]:
    chunk = b" " * 65_536
    for _ in range(TEN_MB // len(chunk)):
        yield chunk


def big_json() -> bytes:
    """A well-formed item whose description makes the body 10 MB."""
    return httpx.Request("POST", "/", json={**VALID, "description": "x" * TEN_MB}).content


async def test_ten_megabyte_body_with_content_length_is_413(client: httpx.AsyncClient) -> None:
    raw = big_json()
    response = await client.post("/items", content=raw, headers=JSON)
    assert response.request.headers["content-length"] == str(len(raw))
    body = problem(response, 413)
    assert body["type"].endswith("content-too-large")
    assert str(LIMIT) in body["detail"]
    await assert_nothing_stored(client)


async def test_ten_megabyte_chunked_body_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/items", content=ten_megabytes(), headers=JSON)
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    body = problem(response, 413)
    assert body["type"].endswith("content-too-large")
    await assert_nothing_stored(client)


async def test_patch_with_ten_megabyte_body_is_413(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item()
    url = f"/items/{item['id']}"
    problem(await client.patch(url, content=big_json(), headers=JSON), 413)
    problem(await client.patch(url, content=ten_megabytes(), headers=JSON), 413)
    await assert_unchanged(client, item)


# --- unicode in names -----------------------------------------------------------------

UNICODE_NAMES = [
    pytest.param("📦 Box of 🔩 bolts", id="emoji"),
    pytest.param("Cafe\u0301 cre\u0300me", id="combining-marks"),
    pytest.param("Z\u0351\u0362a\u0344\u0315l\u0341g\u0352o\u0364", id="zalgo"),
    pytest.param("כיסא עץ אלון", id="hebrew-rtl"),
    pytest.param("كرسي خشب", id="arabic-rtl"),
    pytest.param("Chair \u202ekao\u202c", id="bidi-override"),
    pytest.param("👨\u200d👩\u200d👧\u200d👦 family pack", id="zwj-sequence"),
    pytest.param("🇫🇷🇩🇪 flags", id="regional-indicators"),
    pytest.param("\U0001d518\U0001d52b\U0001d526 \U00010348", id="astral-plane"),
    pytest.param("Straße ǅ ﬁ", id="special-casing"),
]


@pytest.mark.parametrize("name", UNICODE_NAMES)
async def test_unicode_name_round_trips_and_is_found_by_q(
    client: httpx.AsyncClient, new_item: ItemFactory, name: str
) -> None:
    await new_item(name="plain")
    created = await new_item(name=name)
    assert created["name"] == name
    fetched = await client.get(f"/items/{created['id']}")
    assert fetched.json()["name"] == name
    for q in (name, name.upper()):
        found = await client.get("/items", params={"q": q})
        assert found.status_code == 200, found.text
        assert [item["id"] for item in found.json()["data"]] == [created["id"]], q


async def test_replacement_character_is_stored_but_not_searchable(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    # q cannot hold U+FFFD: it is what an undecodable %-escape in the URL becomes.
    created = await new_item(name="a\ufffdb")
    assert created["name"] == "a\ufffdb"
    problem(await client.get("/items", params={"q": "\ufffd"}), 422)


async def test_name_given_as_an_escaped_surrogate_pair_is_one_emoji(
    client: httpx.AsyncClient,
) -> None:
    raw = b'{"sku": "E-1", "name": "\\ud83d\\ude00 smile", "price": 1}'
    response = await post_raw(client, raw)
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "😀 smile"


@pytest.mark.parametrize(
    "unit",
    [
        pytest.param("😀", id="emoji"),  # two UTF-16 units, four UTF-8 bytes
        pytest.param("é", id="latin"),
        pytest.param("\u0301", id="combining-mark"),
    ],
)
async def test_name_limit_is_200_code_points(client: httpx.AsyncClient, unit: str) -> None:
    name = "x" + unit * 199
    assert len(name) == 200
    accepted = await client.post("/items", json={**VALID, "name": name})
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["name"] == name
    refused = await client.post("/items", json={**VALID, "sku": "OK-2", "name": name + unit})
    body = problem(refused, 422)
    assert ["body", "name"] in field_errors(body)
    assert len((await client.get("/items")).json()["data"]) == 1


async def test_name_of_200_emoji_is_accepted_and_201_refused(client: httpx.AsyncClient) -> None:
    accepted = await client.post("/items", json={**VALID, "name": "🦄" * 200})
    assert accepted.status_code == 201, accepted.text
    refused = await client.post("/items", json={**VALID, "sku": "OK-2", "name": "🦄" * 201})
    problem(refused, 422)
    assert [item["name"] for item in (await client.get("/items")).json()["data"]] == ["🦄" * 200]


BAD_NAMES = [
    pytest.param("", id="empty"),
    pytest.param("   ", id="spaces"),
    pytest.param("\u00a0\u3000", id="unicode-spaces"),
    pytest.param("\x00", id="nul"),
    pytest.param("Oak\x00chair", id="nul-inside"),
    pytest.param("Oak\x01chair", id="soh"),
    pytest.param("Oak\x1bchair", id="escape"),
    pytest.param("Oak\x1fchair", id="unit-separator"),
    pytest.param("Oak\x7fchair", id="delete"),
    pytest.param("Oak\nchair", id="newline"),
    pytest.param("Oak\r\nchair", id="crlf"),
    pytest.param("Oak\tchair", id="tab"),
]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_blank_name_or_control_characters_are_422(
    client: httpx.AsyncClient, name: str
) -> None:
    body = problem(await client.post("/items", json={**VALID, "name": name}), 422)
    assert ["body", "name"] in field_errors(body)
    await assert_nothing_stored(client)


@pytest.mark.parametrize("name", ["Oak\x85chair", "Oak\x9b31mchair"], ids=["nel", "csi"])
async def test_c1_control_characters_in_name_are_422(client: httpx.AsyncClient, name: str) -> None:
    problem(await client.post("/items", json={**VALID, "name": name}), 422)
    await assert_nothing_stored(client)


@pytest.mark.parametrize("name", ["\u200b", "\u200d\u200d", "\u2060"], ids=["zwsp", "zwj", "wj"])
async def test_invisible_only_name_is_422(client: httpx.AsyncClient, name: str) -> None:
    problem(await client.post("/items", json={**VALID, "name": name}), 422)
    await assert_nothing_stored(client)


LONE_SURROGATES = [
    pytest.param(b"\\ud800", id="high"),
    pytest.param(b"\\udfff", id="low"),
    pytest.param(b"a\\udc00b", id="low-inside"),
    pytest.param(b"\\ude00\\ud83d", id="pair-reversed"),
]


@pytest.mark.parametrize("escaped", LONE_SURROGATES)
@pytest.mark.parametrize("field", ["name", "description"])
async def test_lone_surrogate_is_422(client: httpx.AsyncClient, field: str, escaped: bytes) -> None:
    body = problem(await post_raw(client, item_with(field, b'"' + escaped + b'"')), 422)
    assert ["body", field] in field_errors(body)
    await assert_nothing_stored(client)


async def test_nul_in_description_is_422(client: httpx.AsyncClient) -> None:
    body = problem(await client.post("/items", json={**VALID, "description": "a\x00b"}), 422)
    assert ["body", "description"] in field_errors(body)
    await assert_nothing_stored(client)


INVALID_UTF8 = [
    pytest.param(b"\xff", id="ff"),
    pytest.param(b"caf\xe9", id="latin-1"),
    pytest.param(b"\xc3", id="truncated-sequence"),
    pytest.param(b"\xc0\xaf", id="overlong"),
    pytest.param(b"\xf4\x90\x80\x80", id="above-u10ffff"),
]


@pytest.mark.parametrize("bad", INVALID_UTF8)
async def test_invalid_utf8_in_body_is_400(client: httpx.AsyncClient, bad: bytes) -> None:
    # docs/api.md: a body that is not UTF-8 at all is 400.
    problem(await post_raw(client, item_with("name", b'"' + bad + b'"')), 400)
    await assert_nothing_stored(client)


async def test_utf8_encoded_surrogate_in_body_is_a_problem(client: httpx.AsyncClient) -> None:
    # Not UTF-8 either (CESU-8 for U+D800); the JSON reader lets it through as a lone
    # surrogate, which validation then refuses: 422 here, where other bad UTF-8 is 400.
    client_error(await post_raw(client, item_with("name", b'"\xed\xa0\x80"')))
    await assert_nothing_stored(client)


# --- q --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "status"),
    [
        pytest.param("🦄" * 200, 200, id="200-emoji"),
        pytest.param("🦄" * 201, 422, id="201-emoji"),
        pytest.param("e\u0301" * 100, 200, id="200-code-points-of-combining"),
        pytest.param("e\u0301" * 100 + "e", 422, id="201-code-points-of-combining"),
    ],
)
async def test_q_limit_is_200_code_points(client: httpx.AsyncClient, q: str, status: int) -> None:
    response = await client.get("/items", params={"q": q})
    if status == 200:
        assert response.status_code == 200, response.text
        assert response.json()["data"] == []
    else:
        body = problem(response, 422)
        assert body["errors"][0]["loc"] == ["query", "q"]


@pytest.mark.parametrize("query", ["q=%00", "q=a%00", "q=%00a"])
async def test_nul_in_q_is_422(
    client: httpx.AsyncClient, new_item: ItemFactory, query: str
) -> None:
    await new_item(name="a")
    body = problem(await client.get(f"/items?{query}"), 422)
    assert body["errors"][0]["loc"] == ["query", "q"]


@pytest.mark.parametrize("q", ["\x01", "a\x1b", "\x7f", "\n"])
async def test_control_characters_in_q_are_422(
    client: httpx.AsyncClient, new_item: ItemFactory, q: str
) -> None:
    await new_item(name="a")
    problem(await client.get("/items", params={"q": q}), 422)


@pytest.mark.parametrize("escaped", ["%FF", "%C3", "%ED%A0%80"], ids=["ff", "cut", "surrogate"])
async def test_q_that_is_not_utf8_is_a_problem(
    client: httpx.AsyncClient, new_item: ItemFactory, escaped: str
) -> None:
    await new_item(name="a\ufffdb")
    client_error(await client.get(f"/items?q={escaped}"))


SQL_NAMES = [
    "100% cotton",
    "100 percent",
    "a_b",
    "axb",
    "back\\slash",
    "it's",
    "semi;colon",
    "[abc]",
    "a*b?",
    'say "hi"',
]


SQL_QUERIES: list[tuple[str, list[str]]] = [
    ("%", ["100% cotton"]),
    ("0%", ["100% cotton"]),
    ("%%", []),
    ("_", ["a_b"]),
    ("a_b", ["a_b"]),
    ("\\", ["back\\slash"]),
    ("\\%", []),
    ("k\\s", ["back\\slash"]),
    ("'", ["it's"]),
    ("''", []),
    ("' OR '1'='1", []),
    ("' OR 1=1 --", []),
    ("'; DROP TABLE items; --", []),
    (";", ["semi;colon"]),
    ("[abc]", ["[abc]"]),
    ("[a", ["[abc]"]),
    ("*", ["a*b?"]),
    ("?", ["a*b?"]),
    ('"', ['say "hi"']),
    ("$1", []),
    (":name", []),
]


@pytest.mark.parametrize(("q", "expected"), SQL_QUERIES, ids=[repr(q) for q, _ in SQL_QUERIES])
async def test_q_with_sql_metacharacters_matches_literally(
    client: httpx.AsyncClient, new_item: ItemFactory, q: str, expected: list[str]
) -> None:
    for name in SQL_NAMES:
        await new_item(name=name)
    response = await client.get("/items", params={"q": q})
    assert response.status_code == 200, response.text
    assert sorted(item["name"] for item in response.json()["data"]) == sorted(expected)
    # The table is still there and whole.
    assert len((await client.get("/items")).json()["data"]) == len(SQL_NAMES)


# --- list parameters ------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "limit=" + "9" * 40,
        "limit=2147483648",
        "limit=-1",
        "limit=",
        "limit=1e3",
        "limit=10.5",
        "limit=0x10",
        "cursor=" + "A" * 3000,
        "q=" + "a" * 5000,
        "min_price=1e400",
        "max_price=" + "9" * 40,
    ],
    ids=lambda query: query[:24],
)
async def test_out_of_range_list_parameter_is_422(client: httpx.AsyncClient, query: str) -> None:
    body = problem(await client.get(f"/items?{query}"), 422)
    assert body["errors"][0]["loc"] == ["query", query.split("=")[0]]


# --- PATCH ----------------------------------------------------------------------------

PATCH_BODIES = [
    pytest.param(b'{"name": "x"', id="truncated"),
    pytest.param(b'{"name": "x",}', id="trailing-comma"),
    pytest.param(b"not json", id="not-json"),
    pytest.param(b"", id="empty"),
    pytest.param(b"[]", id="array"),
    pytest.param(b'"name"', id="string"),
    pytest.param(b'{"name": 5}', id="name-number"),
    pytest.param(b'{"sku": ["A"]}', id="sku-array"),
    pytest.param(b'{"price": {"amount": 1}}', id="price-object"),
    pytest.param(b'{"price": 10000000000}', id="price-above-max"),
    pytest.param(b'{"price": 1e400}', id="price-1e400"),
    pytest.param(b'{"description": 5}', id="description-number"),
    pytest.param(b'{"quantity": -1}', id="quantity"),
    pytest.param(('{"name": "' + "🦄" * 201 + '"}').encode(), id="name-201-emoji"),
    pytest.param(b'{"name": "a\\u0000b"}', id="name-nul"),
    pytest.param(b'{"name": "a\\nb"}', id="name-newline"),
    pytest.param(b'{"name": "\\ud800"}', id="name-lone-surrogate"),
    pytest.param(b'{"description": "\\udfff"}', id="description-lone-surrogate"),
    pytest.param(b'{"name": "\xff"}', id="invalid-utf8"),
    pytest.param(b'{"name": "\xed\xa0\x80"}', id="encoded-surrogate"),
]


@pytest.mark.parametrize("raw", PATCH_BODIES)
async def test_bad_patch_is_a_problem_and_changes_nothing(
    client: httpx.AsyncClient, new_item: ItemFactory, raw: bytes
) -> None:
    item = await new_item(name="Original", description="kept")
    response = await client.patch(f"/items/{item['id']}", content=raw, headers=JSON)
    client_error(response)
    await assert_unchanged(client, item)


async def test_patch_accepts_unicode_edge_cases(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(name="Original")
    url = f"/items/{item['id']}"
    for name in ("🦄" * 200, "👨\u200d👩\u200d👧 כיסא", "Cafe\u0301"):
        response = await client.patch(url, json={"name": name})
        assert response.status_code == 200, response.text
        assert (await client.get(url)).json()["name"] == name
