"""The ``stockroom`` command: serve | migrate."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
import uvicorn

from stockroom.migrations import upgrade
from stockroom.observability import configure_logging
from stockroom.settings import Settings, SettingsError, load_settings

__all__ = ["main"]

EXIT_BAD_SETTING = 2

cli = typer.Typer(
    name="stockroom",
    help="Stockroom, an async inventory service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _settings() -> Settings:
    settings = load_settings()
    configure_logging(settings.log_level_number)
    return settings


@cli.command()
def migrate() -> None:
    """Apply database migrations and exit."""
    settings = _settings()
    upgrade(settings.database_url)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
) -> None:
    """Apply migrations, then serve HTTP (uvicorn with uvloop and httptools)."""
    settings = _settings()
    upgrade(settings.database_url)
    uvicorn.run(
        "stockroom.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=30,
    )


def main() -> None:
    try:
        cli()
    except SettingsError as exc:
        print(f"stockroom: {exc}", file=sys.stderr)  # noqa: T201
        sys.exit(EXIT_BAD_SETTING)
