"""The README's settings table names every setting there is."""

from __future__ import annotations

from pathlib import Path

from stockroom.settings import ENV_PREFIX, Settings


def test_readme_lists_every_setting(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text()
    for field in Settings.model_fields:
        assert f"`{ENV_PREFIX}{field.upper()}`" in readme, field
