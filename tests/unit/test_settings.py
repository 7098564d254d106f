"""Reading settings (stockroom.settings): values as operators write them, and a bad one
refused with one line naming it. The command line's side (exit status 2, nothing on stdout)
is tests/test_settings.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stockroom.settings import (
    DEFAULT_DATABASE_URL,
    Settings,
    SettingsError,
    load_settings,
    reference_table,
    unknown_variables,
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No STOCKROOM_* variable of the shell and no .env of the checkout: each test sets its own."""
    for variable in list(os.environ):
        if variable.upper().startswith("STOCKROOM_"):
            monkeypatch.delenv(variable)
    monkeypatch.chdir(tmp_path)


def _refusal(**values: object) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(**values)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_the_defaults_need_nothing() -> None:
    settings = load_settings()
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.backend == "sqlite"
    assert settings.cors_origin_list == []
    assert settings.rate_limit_item is None


def test_plain_driver_urls_are_pinned_to_async_drivers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKROOM_DATABASE_URL", "postgres://u:p@db.example:5433/stock")
    assert load_settings().database_url == "postgresql+asyncpg://u:p@db.example:5433/stock"
    monkeypatch.setenv("STOCKROOM_DATABASE_URL", "sqlite:///./x.db")
    assert load_settings().database_url == "sqlite+aiosqlite:///./x.db"
    monkeypatch.delenv("STOCKROOM_DATABASE_URL")
    assert load_settings(_env_file=None).database_url == DEFAULT_DATABASE_URL


@pytest.mark.parametrize(
    ("given", "kind", "database", "password", "query"),
    [
        ("postgresql://u@h/db", "postgresql", "db", None, {}),
        ("postgresql+asyncpg://u@h/db", "postgresql", "db", None, {}),
        ("postgres://u:p%40ss%2Fx@h:5433/db", "postgresql", "db", "p@ss/x", {}),
        ("postgresql://u@h/db?ssl=require", "postgresql", "db", None, {"ssl": "require"}),
        ("sqlite:///:memory:", "sqlite", ":memory:", None, {}),
        ("sqlite:////tmp/a%b.db", "sqlite", "/tmp/a%b.db", None, {}),
        ("sqlite+aiosqlite:///./my db.db", "sqlite", "./my db.db", None, {}),
    ],
)
def test_a_pinned_url_keeps_every_part_of_the_given_one(
    given: str, kind: str, database: str, password: str | None, query: dict[str, str]
) -> None:
    settings = load_settings(database_url=given)
    url = settings.database
    assert (
        url.drivername == {"postgresql": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}[kind]
    )
    assert settings.backend == kind
    assert url.database == database
    assert url.password == password
    assert dict(url.query) == query


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "not a database URL"),
        ("not a url at all", "not a database URL"),
        ("mysql://root@localhost/db", "unsupported scheme 'mysql'"),
        ("postgresql+psycopg://u@h/db", "unsupported scheme 'postgresql+psycopg'"),
        ("sqlite+pysqlite:///x.db", "unsupported scheme 'sqlite+pysqlite'"),
        ("postgresql://localhost", "a PostgreSQL URL needs a database name"),
    ],
)
def test_a_database_url_stockroom_cannot_use_is_refused(value: str, reason: str) -> None:
    message = _refusal(database_url=value)
    assert message.startswith("invalid setting STOCKROOM_DATABASE_URL: ")
    assert reason in message


def test_several_bad_settings_are_named_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKROOM_DATABASE_POOL_SIZE", "x")
    monkeypatch.setenv("STOCKROOM_DATABASE_MAX_OVERFLOW", "y")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert "STOCKROOM_DATABASE_POOL_SIZE" in message
    assert "STOCKROOM_DATABASE_MAX_OVERFLOW" in message


def test_a_dotenv_file_in_the_working_folder_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("STOCKROOM_LOG_LEVEL=debug\n")
    assert load_settings().log_level == "debug"
    assert load_settings(_env_file=None).log_level == "info"


# --- CORS origins -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "origins"),
    [
        ("", []),
        (" , ", []),
        ("*", ["*"]),
        (" * ", ["*"]),
        ("https://app.example.com", ["https://app.example.com"]),
        (
            " https://a.example.com , http://localhost:3000 ,",
            ["https://a.example.com", "http://localhost:3000"],
        ),
        ("http://127.0.0.1:8080,http://[::1]:8080", ["http://127.0.0.1:8080", "http://[::1]:8080"]),
    ],
)
def test_cors_origins_are_a_trimmed_comma_separated_list(value: str, origins: list[str]) -> None:
    assert load_settings(cors_origins=value).cors_origin_list == origins


@pytest.mark.parametrize(
    "origin",
    [
        "https://app.example.com/",  # a path
        "https://app.example.com/app",
        "HTTPS://APP.EXAMPLE.COM",  # browsers send origins in lower case
        "https://app.example.com:443",  # and without the default port
        "http://app.example.com:80",
        "https://app.example.com:",
        "https://app.example.com:99999",
        "ftp://files.example.com",
        "app.example.com",
        "https://user@app.example.com",
        "https://app.example.com?x=1",
        "https://app.example.com#top",
        "https://*.example.com",
        "https://-bad.example.com",
        "null",
    ],
)
def test_a_cors_value_that_is_not_an_origin_is_refused(origin: str) -> None:
    message = _refusal(cors_origins=f"https://ok.example.com,{origin}")
    assert message.startswith("invalid setting STOCKROOM_CORS_ORIGINS: ")
    assert f"{origin!r} is not an origin" in message


def test_star_is_only_allowed_alone() -> None:
    assert "'*' is not an origin" in _refusal(cors_origins="*,https://app.example.com")


# --- Durations, numbers, switches -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"), [("0.5", 0.5), ("2", 2.0), ("3600", 3600.0), ("1e1", 10.0)]
)
def test_durations_are_seconds_from_text(
    monkeypatch: pytest.MonkeyPatch, value: str, seconds: float
) -> None:
    monkeypatch.setenv("STOCKROOM_WEBHOOK_TIMEOUT", value)
    assert load_settings().webhook_timeout == seconds


@pytest.mark.parametrize(
    ("value", "expected"), [(None, 30.0), ("2", 2.0), ("0", None), ("3601", None)]
)
def test_the_webhook_lease_is_seconds_30_by_default(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: float | None
) -> None:
    if value is not None:
        monkeypatch.setenv("STOCKROOM_WEBHOOK_LEASE_SECONDS", value)
    if expected is None:
        assert _refusal().startswith("invalid setting STOCKROOM_WEBHOOK_LEASE_SECONDS: ")
    else:
        assert load_settings().webhook_lease_seconds == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("0", "greater than 0"),
        ("-1", "greater than 0"),
        ("3600.5", "less than or equal to 3600"),
        ("5s", "valid number"),
        ("inf", "less than or equal to 3600"),
    ],
)
def test_a_duration_out_of_bounds_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str, reason: str
) -> None:
    monkeypatch.setenv("STOCKROOM_WEBHOOK_TIMEOUT", value)
    message = _refusal()
    assert message.startswith("invalid setting STOCKROOM_WEBHOOK_TIMEOUT: ")
    assert reason in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [("on", True), ("true", True), ("1", True), ("off", False), ("false", False), ("0", False)],
)
def test_switches_read_on_and_off(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: bool
) -> None:
    monkeypatch.setenv("STOCKROOM_AUTH", value)
    assert load_settings().auth is expected


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("events_retention_days", 6, "greater than or equal to 7"),
        ("events_stream_buffer", 9, "greater than or equal to 10"),
        ("webhook_max_attempts", 0, "greater than or equal to 1"),
        ("max_body_bytes", 1023, "greater than or equal to 1024"),
        ("log_level", "loud", "Input should be"),
        ("events_token_secret", "x" * 31, "too short: use at least 32 random characters"),
        ("rate_limit", "0/second", "not one rate limit"),
        ("rate_limit", "10/second;600/minute", "not one rate limit"),
        ("redis_url", "http://127.0.0.1:6379", "not a Redis URL"),
    ],
)
def test_a_bad_value_is_refused_in_one_line_naming_its_variable(
    field: str, value: object, reason: str
) -> None:
    message = _refusal(**{field: value})
    assert message.startswith(f"invalid setting STOCKROOM_{field.upper()}: ")
    assert reason in message


def test_text_settings_are_trimmed() -> None:
    settings = load_settings(rate_limit=" 10/second ", redis_url=" redis://h:6379/0 ")
    assert settings.rate_limit == "10/second"
    assert settings.rate_limit_item is not None
    assert settings.rate_limit_item.amount == 10
    assert settings.redis_url == "redis://h:6379/0"


def test_a_32_character_token_secret_and_rediss_are_accepted() -> None:
    settings = load_settings(events_token_secret="x" * 32, redis_url="rediss://h")
    assert settings.events_token_secret == "x" * 32


@pytest.mark.parametrize(
    ("level", "number"), [("debug", 10), ("info", 20), ("warning", 30), ("error", 40)]
)
def test_log_levels_map_to_logging_numbers(level: str, number: int) -> None:
    assert load_settings(log_level=level).log_level_number == number


# --- Unknown variables and the reference table -----------------------------------------------


def test_an_unknown_variable_is_named_with_the_closest_setting() -> None:
    lines = unknown_variables(
        {
            "STOCKROOM_DATABSE_URL": "x",
            "stockroom_log_levl": "debug",
            "STOCKROOM_BANANA": "1",
            "STOCKROOM_LOG_LEVEL": "info",  # a setting
            "STOCKROOM_TEST_POSTGRES_URL": "x",  # the test suite's, not the service's
            "PATH": "/bin",
        }
    )
    assert lines == [
        "STOCKROOM_BANANA is not a setting and is ignored",
        "STOCKROOM_DATABSE_URL is not a setting and is ignored; "
        "did you mean STOCKROOM_DATABASE_URL?",
        "stockroom_log_levl is not a setting and is ignored; did you mean STOCKROOM_LOG_LEVEL?",
    ]


def test_the_reference_table_has_a_row_per_setting() -> None:
    table = reference_table().splitlines()
    assert table[0] == "| variable | type | default | meaning |"
    rows = table[2:]
    assert [row.split("`")[1] for row in rows] == [
        f"STOCKROOM_{name.upper()}" for name in Settings.model_fields
    ]
    by_name = {row.split("`")[1]: row for row in rows}
    assert "| on/off | `on` |" in by_name["STOCKROOM_AUTH"]
    assert "| integer (≥ 1, ≤ 1000) | `20` |" in by_name["STOCKROOM_DATABASE_POOL_SIZE"]
    assert "| seconds (> 0, ≤ 3600) | `10` |" in by_name["STOCKROOM_WEBHOOK_TIMEOUT"]
    assert "| (empty) |" in by_name["STOCKROOM_CORS_ORIGINS"]
    assert "`debug` / `info` / `warning` / `error`" in by_name["STOCKROOM_LOG_LEVEL"]
