"""`stockroom apikey create | list | revoke`, as an operator runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
from fastapi import FastAPI

from tests.support.apps import client_for
from tests.support.problems import problem
from tests.support.servers import cli_create_key, stockroom_env


def stockroom(database_url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stockroom", *args],
        env=stockroom_env(database_url),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_create_list_revoke(
    app: FastAPI, database_url: str, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    created = stockroom(database_url, tmp_path, "apikey", "create", "--name", "ops",
                        "--scopes", "read,write")  # fmt: skip
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert created.stdout == secret + "\n"
    async with client_for(app, secret) as ops:
        assert (
            await ops.post("/items", json={"sku": "C", "name": "c", "price": 1})
        ).status_code == 201
        problem(await ops.get("/keys"), 403)

    listed = stockroom(database_url, tmp_path, "apikey", "list")
    assert listed.returncode == 0
    assert "ops\tread,write\t" in listed.stdout
    assert secret not in listed.stdout

    again = stockroom(database_url, tmp_path, "apikey", "create", "--name", "ops")
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert again.stdout == ""

    revoked = stockroom(database_url, tmp_path, "apikey", "revoke", "ops")
    assert revoked.returncode == 0
    assert "revoked" in stockroom(database_url, tmp_path, "apikey", "list").stdout
    app.state.resources.authenticator.forget("ops")  # as the cache time would, on a running server
    async with client_for(app, secret) as ops:
        problem(await ops.get("/items"), 401)


def test_unknown_scope_is_refused(tmp_path: Path) -> None:
    # Once, not per backend: the scopes are checked as the arguments are parsed, before any
    # database work (the SQLite file named here is never made).
    url = f"sqlite+aiosqlite:///{tmp_path}/never.db"
    result = stockroom(url, tmp_path, "apikey", "create", "--name", "x",
                       "--scopes", "read,root")  # fmt: skip
    assert result.returncode == 2
    assert "root" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "never.db").exists()


async def test_keys_from_the_cli_work(database_url: str, tmp_path: Path) -> None:
    assert cli_create_key(database_url, tmp_path, "read").startswith("sr_")
