"""The check every error answer of the API must pass."""

from __future__ import annotations

from typing import Any

import httpx


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert ``response`` is a problem+json with ``status`` and no leaked internals."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    lowered = response.text.lower()
    for leak in ("traceback", "sqlalchemy", "asyncpg", "sqlite3", "select ", "insert ", 'file "'):
        assert leak not in lowered, f"problem leaks {leak!r}: {response.text}"
    return body
