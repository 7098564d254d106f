"""`Consistency-Token` without read replicas: the /items operations declare it (OpenAPI), so a
value that is not a token is refused like any bad input; a token is accepted and changes
nothing (every read is the primary's), and no answer carries one."""

from __future__ import annotations

import httpx
import pytest

from tests.support.items import ItemFactory
from tests.support.problems import problem

TOKEN = "Consistency-Token"


@pytest.mark.parametrize("value", ["not-a-token", "ABCDEF" + "0" * 34, "0" * 39, "0" * 41])
async def test_a_value_that_is_not_a_token_is_400_on_the_items_operations(
    client: httpx.AsyncClient, new_item: ItemFactory, value: str
) -> None:
    item = await new_item(quantity=1)
    for answer in (
        await client.get(f"/items/{item['id']}", headers={TOKEN: value}),
        await client.get("/items", headers={TOKEN: value}),
        await client.post(
            f"/items/{item['id']}/adjustments", json={"delta": 1}, headers={TOKEN: value}
        ),
    ):
        body = problem(answer, 400)
        assert body["type"].endswith("invalid-consistency-token")
    # Nothing was applied.
    assert (await client.get(f"/items/{item['id']}")).json()["quantity"] == 1


async def test_a_token_without_replicas_changes_nothing_and_none_comes_back(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=1)
    answer = await client.get(f"/items/{item['id']}", headers={TOKEN: "f" * 40})
    assert answer.status_code == 200
    assert answer.json()["quantity"] == 1
    assert TOKEN.lower() not in answer.headers
    written = await client.post(f"/items/{item['id']}/adjustments", json={"delta": 2})
    assert TOKEN.lower() not in written.headers
    # Other paths do not look at it.
    assert (await client.get("/me", headers={TOKEN: "not-a-token"})).status_code == 200
