"""The fast tier: tests of pure code, run first by `make test-fast` with no database.

A test here that asked for a database fixture would open one (tests/conftest.py makes them
on demand) and the tier would silently stop being fast; collection refuses it instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# The fixtures of tests/conftest.py that create, migrate or serve a database.
_DATABASE_FIXTURES = frozenset(
    {"backend", "database_url", "app", "admin_key", "client", "new_item"}
)
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not item.path.is_relative_to(_HERE):
            continue
        used = sorted(_DATABASE_FIXTURES.intersection(getattr(item, "fixturenames", ())))
        if used:
            raise pytest.UsageError(
                f"{item.nodeid} asks for {', '.join(used)}: tests/unit runs with no database; "
                "put the test beside the package it tests instead"
            )
