"""docs/architecture.md stays true: the files it walks through exist, and its map of
``src/stockroom`` names every module and package there is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# A file named in backticks: `items/router.py`, `tests/test_openapi.py`, `app.py`.
_FILE = re.compile(r"`((?:[a-z_]+/)*[a-z_]+\.py)")
# A dotted function or module the walks name: `items/service.get_item` -> items/service.py.
_MODULE_CALL = re.compile(r"`((?:[a-z_]+/)+[a-z_]+)\.(?!md`)[A-Za-z_]+")


def _doc(repo_root: Path) -> str:
    return (repo_root / "docs" / "architecture.md").read_text()


def _exists(repo_root: Path, relative: str) -> bool:
    package = repo_root / "src" / "stockroom"
    if relative.startswith("tests/"):
        return (repo_root / relative).exists()
    name = Path(relative).name
    if "/" not in relative and name in ("_postgresql.py", "_sqlite.py", "store.py"):
        # The per-domain files in general: at least one domain has each.
        return any(package.glob(f"*/{name}")) or any(package.glob(f"*/{name[:-3]}"))
    path = package / relative
    # A module may have grown into a package of the same name.
    return path.exists() or path.with_suffix("").is_dir()


def test_every_file_the_page_names_exists(repo_root: Path) -> None:
    doc = _doc(repo_root)
    named = set(_FILE.findall(doc)) | {f"{m}.py" for m in _MODULE_CALL.findall(doc)}
    assert len(named) >= 15  # the walks name files; a broken pattern would find none
    missing = sorted(name for name in named if not _exists(repo_root, name))
    assert missing == []


@pytest.mark.parametrize("kind", ["module", "package"])
def test_the_map_names_every_module_and_package(repo_root: Path, kind: str) -> None:
    doc = _doc(repo_root)
    tree = doc[doc.index("## Where things are") :]
    package = repo_root / "src" / "stockroom"
    if kind == "module":
        names = {
            p.name for p in package.glob("*.py") if p.name not in ("__init__.py", "__main__.py")
        }
    else:
        names = {f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").exists()}
    assert names, kind
    unlisted = sorted(name for name in names if f"  {name}" not in tree)
    assert unlisted == []
