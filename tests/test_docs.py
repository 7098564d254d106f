"""/docs and /redoc work with no internet: every asset comes from the service itself."""

from __future__ import annotations

import re

import httpx
import pytest

LINK = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_page_and_assets_are_served_locally(
    client: httpx.AsyncClient, page: str
) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert not re.search(r"https?://|//cdn|googleapis", html), "page refers to another host"
    links = [a or b for a, b in LINK.findall(html)]
    # Swagger UI: its script, its stylesheet, its icon and the schema.
    assert len(links) >= 2
    assert "/openapi.json" in html
    for link in [*links, "/openapi.json"]:
        assert link.startswith("/"), link
        asset = await client.get(link)
        assert asset.status_code == 200, link
        assert len(asset.content) > 100, link


async def test_openapi_documents_problem_responses(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    post = schema["paths"]["/items"]["post"]["responses"]
    assert "application/problem+json" in post["409"]["content"]
    assert "application/problem+json" in post["422"]["content"]
    assert "/docs" not in schema["paths"]
