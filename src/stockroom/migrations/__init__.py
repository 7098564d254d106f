"""Alembic migrations, runnable from code (``stockroom migrate``) and from ``alembic``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

__all__ = [
    "MIGRATION_ONLY",
    "MigrationRefusedError",
    "alembic_config",
    "include_object",
    "upgrade",
    "upgrade_async",
]

_HERE = Path(__file__).parent

# PostgreSQL objects that migrations make and the models do not describe (0008: the trigram
# indexes of search, the totals' table; 0009: search's one index instead of 0008's two): a
# comparison of the models with a database leaves them out (env.py, tests/test_migrations.py).
MIGRATION_ONLY = frozenset(
    {"ix_items_name_key_trgm", "ix_items_sku_trgm", "ix_items_search_trgm", "item_totals"}
)


class MigrationRefusedError(Exception):
    """A migration cannot be applied by this role; ``str()`` says what to do (one line)."""


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic's filter for autogenerate: everything but MIGRATION_ONLY."""
    return name not in MIGRATION_ONLY


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    config.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``. Blocking: call from sync code or a thread."""
    command.upgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    # env.py runs its own event loop, so it gets a thread of its own.
    await asyncio.to_thread(upgrade, database_url, revision)
