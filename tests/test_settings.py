"""A bad setting stops start-up with exit status 2 and one line naming it. How each value is
read and refused, in process, is tests/unit/test_settings.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import Batch


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")}
    return subprocess.run(
        [sys.executable, "-m", "stockroom", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


BAD_SETTINGS = [
    ("STOCKROOM_DATABASE_URL", "not a url at all", "not a database URL"),
    ("STOCKROOM_DATABASE_URL", "mysql://root@localhost/db", "unsupported scheme"),
    ("STOCKROOM_DATABASE_URL", "postgresql+asyncpg://localhost", "needs a database name"),
    ("STOCKROOM_DATABASE_POOL_SIZE", "abc", "valid integer"),
    ("STOCKROOM_DATABASE_POOL_SIZE", "0", "greater than or equal to 1"),
    ("STOCKROOM_DATABASE_POOL_TIMEOUT", "-1", "greater than 0"),
    ("STOCKROOM_MAX_BODY_BYTES", "lots", "valid integer"),
    ("STOCKROOM_LOG_LEVEL", "loud", "Input should be"),
    ("STOCKROOM_RATE_LIMIT", "lots", "not one rate limit"),
    ("STOCKROOM_RATE_LIMIT", "10/second;600/minute", "not one rate limit"),
    ("STOCKROOM_REDIS_URL", "http://127.0.0.1:6379", "not a Redis URL"),
    ("STOCKROOM_SHUTDOWN_TIMEOUT", "0", "greater than 0"),
    ("STOCKROOM_DATABASE_PGBOUNCER", "maybe", "valid boolean"),
]
COMMANDS = ["migrate", "serve"]


@pytest.fixture(scope="module")
def bad_setting_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Batch[tuple[str, str, str]]]:
    """A process per (command, variable, value), a few at a time, each in a folder of its own."""

    def command(case: tuple[str, str, str]) -> tuple[list[str], dict[str, str], Path]:
        name, variable, value = case
        clean = {k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")}
        args = [name, "--port", "0"] if name == "serve" else [name]
        folder = tmp_path_factory.mktemp("bad-setting")
        return [sys.executable, "-m", "stockroom", *args], {**clean, variable: value}, folder

    cases = [(name, variable, value) for name in COMMANDS for variable, value, _ in BAD_SETTINGS]
    batch = Batch(cases, command)
    try:
        yield batch
    finally:
        batch.close()


@pytest.mark.parametrize(("variable", "value", "reason"), BAD_SETTINGS)
@pytest.mark.parametrize("command", COMMANDS)
def test_bad_setting_stops_start_up(
    bad_setting_runs: Batch[tuple[str, str, str]],
    command: str,
    variable: str,
    value: str,
    reason: str,
) -> None:
    result, folder = bad_setting_runs.result((command, variable, value))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert reason in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (folder / "stockroom.db").exists()


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("STOCKROOM_DATABASE_POOL_SIZE=many\n")
    result = run_cli(["migrate"], {}, tmp_path)
    assert result.returncode == 2
    assert "STOCKROOM_DATABASE_POOL_SIZE" in result.stderr


def test_default_database_is_an_sqlite_file_in_the_working_folder(tmp_path: Path) -> None:
    result = run_cli(["migrate"], {}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "stockroom.db").is_file()
