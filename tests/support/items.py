"""Items made through the API, as the ``new_item`` fixture makes them."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

import httpx


class ItemFactory(Protocol):
    """``await new_item(**fields)``: POSTs an item (defaults filled in for the fields not
    given) and returns its JSON; fails the test unless the answer is 201."""

    def __call__(self, **fields: Any) -> Awaitable[dict[str, Any]]: ...


def item_factory(client: httpx.AsyncClient) -> ItemFactory:
    counter = iter(range(1, 1_000_000))

    async def make(**fields: Any) -> dict[str, Any]:
        n = next(counter)
        body = {"sku": f"SKU-{n:05d}", "name": f"Item {n}", "price": "10.00", **fields}
        response = await client.post("/items", json=body)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    return make
