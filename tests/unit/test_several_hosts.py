"""A primary URL that names several hosts (failover, issue #23): the forms accepted, the one
kept, and what each driver is given."""

from __future__ import annotations

import pytest
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect

from stockroom.database._postgresql._database import _dsn
from stockroom.settings import SettingsError, load_settings

SQLALCHEMY_FORM = (
    "postgresql+asyncpg://u:p@/db?host=h1%3A5432&host=h2%3A5433&target_session_attrs=read-write"
)


@pytest.mark.parametrize(
    "given",
    [
        "postgresql://u:p@h1:5432,h2:5433/db",  # libpq's
        "postgresql+asyncpg://u:p@h1,h2:5433/db?target_session_attrs=read-write",
        "postgresql+asyncpg://u:p@/db?host=h1:5432&host=h2:5433",  # SQLAlchemy's
        "postgresql+asyncpg://u:p@/db?host=h1,h2:5433",
    ],
)
def test_every_form_of_several_hosts_becomes_sqlalchemys_with_read_write(given: str) -> None:
    assert load_settings(database_url=given).database_url == SQLALCHEMY_FORM


def test_one_host_is_left_as_it_is() -> None:
    url = "postgresql+asyncpg://u@h1:5432/db"
    assert load_settings(database_url=url).database_url == url


def test_asyncpg_gets_one_comma_separated_host_list() -> None:
    # asyncpg reads only the last of repeated host parameters.
    assert _dsn(load_settings(database_url=SQLALCHEMY_FORM)) == (
        "postgresql://u:p@/db?host=h1%3A5432%2Ch2%3A5433&target_session_attrs=read-write"
    )


def test_sqlalchemy_gives_asyncpg_every_host_and_the_session_attrs() -> None:
    settings = load_settings(database_url=SQLALCHEMY_FORM)
    dialect = asyncpg_dialect()  # type: ignore[no-untyped-call]
    _args, params = dialect.create_connect_args(settings.database)  # type: ignore[no-untyped-call]
    assert params["host"] == ["h1", "h2"]
    assert params["port"] == [5432, 5433]
    assert params["target_session_attrs"] == "read-write"


def test_a_primary_that_may_be_a_standby_is_refused() -> None:
    with pytest.raises(SettingsError, match="target_session_attrs must be read-write"):
        load_settings(
            database_url="postgresql://u@/db?host=h1:1&host=h2:2&target_session_attrs=any"
        )


def test_a_replica_url_names_one_server() -> None:
    with pytest.raises(SettingsError, match="names one server"):
        load_settings(
            database_url="postgresql://u@h/db",
            database_replica_urls="postgresql://u@/db?host=h1:1&host=h2:2",
        )
