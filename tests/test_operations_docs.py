"""docs/operations.md lists every setting exactly as the model defines it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_script(repo_root: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "settings_reference", repo_root / "scripts" / "settings-reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_reference_is_up_to_date(repo_root: Path) -> None:
    script = load_script(repo_root)
    current = (repo_root / "docs" / "operations.md").read_text()
    assert script.rewrite(current) == current, "run `make docs` to regenerate the settings table"
