"""The README: it links the settings reference, its shell examples run as written,
and it and `make run` name the endpoints that really are open.

The examples are every fenced ``sh``, ``bash`` or ``console`` block (in ``console``, the
lines after a ``$`` prompt), run in order in one bash, as a reader runs them in one terminal:
in a fresh folder whose ``.venv`` is this test run's, against a real ``stockroom serve`` on a
free 127.0.0.1 port with a fresh SQLite database, ``API`` set to its address. Each block
runs under ``set -euo pipefail`` and ``curl`` fails on an error status (``--fail-with-body``),
so a wrong example fails the test. A block whose first line is ``# not run by the README
test: REASON`` is skipped: it needs the network or another server, or runs until stopped.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from fastapi import FastAPI

from stockroom.settings import ENV_PREFIX, Settings
from tests.support.apps import client_for
from tests.support.servers import start_server, stockroom_env

NOT_RUN = "# not run by the README test:"
_FENCE = re.compile(r"^```(sh|bash|console)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
# Each example's curl, as written, but failing on a 4xx or 5xx (and never hanging).
_PRELUDE = """\
set -euo pipefail
curl() { command curl --fail-with-body --show-error --max-time 30 "$@"; }
"""
# The docs pages, open by design (the assets under /docs-assets with them).
_DOCS = {"/docs", "/redoc", "/openapi.json"}


def test_readme_links_the_generated_settings_reference_and_names_only_real_settings(
    repo_root: Path,
) -> None:
    """The README does not copy the settings table (docs/operations.md has it, generated and
    kept current by test_operations_docs): it links it, and every setting it names exists."""
    readme = (repo_root / "README.md").read_text()
    assert "](docs/operations.md#settings)" in readme
    operations = (repo_root / "docs" / "operations.md").read_text()
    assert "\n## Settings\n" in operations  # the anchor the link points to
    real = {f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields}
    named = set(re.findall(rf"`({ENV_PREFIX}[A-Z0-9_]+)", readme))
    assert named, "the README names the settings to know first"
    assert named - real - {"STOCKROOM_TEST_POSTGRES_URL"} == set()


def shell_examples(markdown: str) -> list[tuple[int, str]]:
    """(line number, script) of each block to run, in order."""
    examples = []
    for match in _FENCE.finditer(markdown):
        kind, body = match.group(1), match.group(2)
        if body.lstrip().startswith(NOT_RUN):
            continue
        if kind == "console":
            body = "".join(
                line.removeprefix("$ ") + "\n"
                for line in body.splitlines()
                if line.startswith("$ ")
            )
        examples.append((markdown.count("\n", 0, match.start()) + 1, body))
    return examples


def test_examples_are_found_and_skipped_by_the_marker() -> None:
    markdown = (
        "text\n```sh\necho one\n```\n```python\nprint(2)\n```\n"
        f"```bash\n{NOT_RUN} needs the network\ncurl https://example.com\n```\n"
        "```console\n$ echo three\nthree\n```\n"
    )
    assert shell_examples(markdown) == [(2, "echo one\n"), (12, "echo three\n")]


def test_readme_shell_examples_run_as_written(repo_root: Path, tmp_path: Path) -> None:
    examples = shell_examples((repo_root / "README.md").read_text())
    assert len(examples) >= 3  # the key, the API tour, the files
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'readme.db'}"
    server = start_server(database_url, tmp_path)
    reader = tmp_path / "reader"
    reader.mkdir()
    (reader / ".venv").symlink_to(Path(sys.executable).parent.parent)
    script = _PRELUDE + "".join(
        f"echo {shlex.quote(f'--- README.md line {line}')}\n{body}" for line, body in examples
    )
    try:
        result = subprocess.run(
            ["bash", "-c", script],
            env={**stockroom_env(database_url), "API": server.url},
            cwd=reader,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout[-6000:]
    assert "Traceback" not in result.stdout
    # The export-then-import walk-through: the exported file reads back, changing nothing.
    exported = (reader / "items.csv").read_text().splitlines()
    assert exported[0].startswith("id,sku,name")
    assert len(exported) == 3
    assert '"unchanged":2' in result.stdout


async def test_open_endpoints_are_the_ones_readme_and_make_run_name(
    app: FastAPI, repo_root: Path
) -> None:
    """Every GET without a key: those not answered 401 are open; README and the banner of
    `make run` must name exactly these (the banner says "the docs" for the docs pages)."""
    candidates = {
        path
        for path, operations in app.openapi()["paths"].items()
        if "get" in operations and "{" not in path
    } | _DOCS
    async with client_for(app) as anonymous:
        open_paths = {path for path in candidates if (await anonymous.get(path)).status_code != 401}
    assert {"/ping", "/healthz", "/readyz", "/metrics"} <= open_paths

    readme = (repo_root / "README.md").read_text()
    sentence = re.search(r"Every endpoint except (.*?) needs an API key", readme, re.DOTALL)
    assert sentence is not None
    assert set(re.findall(r"`(/[a-z.]*)`", sentence.group(1))) == open_paths

    makefile = (repo_root / "Makefile").read_text()
    banner = re.search(r"Every endpoint but (.*?) needs an API key", makefile)
    assert banner is not None
    assert "the docs" in banner.group(1)
    assert set(re.findall(r"/[a-z.]+", banner.group(1))) == open_paths - _DOCS


def test_readme_examples_use_api_not_a_fixed_address(repo_root: Path) -> None:
    """The examples reach the service through $API, so that they run wherever it listens."""
    for line, body in shell_examples((repo_root / "README.md").read_text()):
        for command in body.splitlines():
            if command.lstrip().startswith("curl"):
                assert "$API" in command, f"README.md line {line}: {command}"
        assert "127.0.0.1:8000/" not in body, f"README.md line {line}"
