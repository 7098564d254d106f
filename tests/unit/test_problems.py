"""Problem documents (stockroom.problems): how they are written and documented, and which
database errors are a 503 (retry shortly) rather than a 500."""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson
import pytest
from fastapi.exceptions import RequestValidationError
from sqlalchemy import exc as sa_exc

from stockroom.database._postgresql._engine import create_engine
from stockroom.database.failures import failed_to_connect, mark_connect_failure
from stockroom.problems import (
    PROBLEM_CONTENT_TYPE,
    PROBLEM_SCHEMAS,
    _on_validation_error,
    internal_error_response,
    is_unavailable,
    problem_response,
    problem_responses,
    unavailable_response,
)
from stockroom.settings import Settings
from tests.support.servers import free_port


def _body(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(response.body)
    return body


def test_a_problem_has_type_title_status_detail_and_its_extra_members() -> None:
    response = problem_response(409, "insufficient-stock", "Only 2 left.", available=2)
    assert response.status_code == 409
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert _body(response) == {
        "type": "/problems/insufficient-stock",
        "title": "Conflict",
        "status": 409,
        "detail": "Only 2 left.",
        "available": 2,
    }
    required = PROBLEM_SCHEMAS["Problem"]["required"]
    assert set(required) <= _body(response).keys()


def test_an_unexpected_error_says_nothing_of_its_cause() -> None:
    body = _body(internal_error_response())
    assert body["status"] == 500
    assert body["type"] == "/problems/internal-error"
    assert body["detail"] == "An unexpected error occurred; it has been logged."


def test_unavailable_asks_to_retry_after_a_second() -> None:
    response = unavailable_response()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert _body(response)["type"] == "/problems/service-unavailable"


def test_documented_problem_responses() -> None:
    responses = problem_responses(401, 404, 422, 503)
    # A route that needs a key may be rate limited: 429 comes with 401.
    assert sorted(responses) == [401, 404, 422, 429, 503]
    ref = {
        status: r["content"][PROBLEM_CONTENT_TYPE]["schema"]["$ref"]
        for status, r in responses.items()
    }
    assert ref[422] == "#/components/schemas/ValidationProblem"
    assert ref[404] == "#/components/schemas/Problem"
    assert {status for status, r in responses.items() if "headers" in r} == {429, 503}
    assert problem_responses(418)[418]["description"] == "I'm a Teapot"


async def test_a_validation_problem_lists_every_error_and_sums_up_three() -> None:
    errors = [
        {"type": "value_error", "loc": ("body", "price"), "msg": "Value error, too dear"},
        {"type": "missing", "loc": ("body", "sku"), "msg": "Field required"},
        {"type": "string_too_long", "loc": ("body", "items", 0, "name"), "msg": "too long"},
        {"type": "missing", "loc": ("query", "limit"), "msg": "bad"},
        {"type": "missing", "loc": ("query", "sort"), "msg": "bad"},
    ]
    body = _body(await _on_validation_error(None, RequestValidationError(errors)))  # type: ignore[arg-type]
    assert body["status"] == 422
    assert body["errors"][0] == {"loc": ["body", "price"], "msg": "too dear"}
    assert body["errors"][2] == {"loc": ["body", "items", 0, "name"], "msg": "too long"}
    assert len(body["errors"]) == 5
    assert body["detail"] == (
        "body.price: too dear; body.sku: Field required; body.items.0.name: too long (and 2 more)"
    )


async def test_a_body_that_is_not_json_is_said_so_once() -> None:
    errors = [{"type": "json_invalid", "loc": ("body", 7), "msg": "JSON decode error"}]
    body = _body(await _on_validation_error(None, RequestValidationError(errors)))  # type: ignore[arg-type]
    assert body["errors"] == [{"loc": ["body"], "msg": "The body is not valid JSON."}]


# --- Which database errors are a 503 ----------------------------------------------------------


class _PostgresError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def _sqlite_error(code: int) -> sqlite3.Error:
    error = sqlite3.OperationalError("database is locked")
    error.sqlite_errorcode = code
    return error


@pytest.mark.parametrize(
    ("sqlstate", "unavailable"),
    [
        ("08006", True),  # connection failure
        ("08001", True),
        ("53300", True),  # too many connections
        ("57P01", True),  # admin shutdown
        ("57P03", True),  # cannot connect now
        ("57014", True),  # statement timeout
        ("42P01", False),  # undefined table: a broken deployment
        ("23505", False),  # a unique violation nobody expected: a bug
        ("22003", False),  # numeric value out of range
    ],
)
def test_postgresql_errors(sqlstate: str, unavailable: bool) -> None:
    error = sa_exc.DBAPIError("SELECT 1", {}, _PostgresError(sqlstate))
    assert is_unavailable(error) is unavailable


@pytest.mark.parametrize(
    ("code", "unavailable"),
    [(sqlite3.SQLITE_BUSY, True), (sqlite3.SQLITE_LOCKED, True), (sqlite3.SQLITE_CORRUPT, False)],
)
def test_sqlite_errors(code: int, unavailable: bool) -> None:
    error = sa_exc.OperationalError("SELECT 1", {}, _sqlite_error(code))
    assert is_unavailable(error) is unavailable


def test_the_pools_timeout_and_a_lost_connection_are_unavailable() -> None:
    assert is_unavailable(sa_exc.TimeoutError())
    lost = sa_exc.DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)
    assert is_unavailable(lost)
    reset = sa_exc.DBAPIError("SELECT 1", {}, ConnectionResetError())
    assert is_unavailable(reset)


def _raised_in(module: str, error: Exception) -> Exception:
    """``error`` as raised by code of ``module`` (its traceback leads there)."""
    namespace: dict[str, Any] = {"__name__": module}
    exec("def fail(error):\n    raise error", namespace)
    with pytest.raises(type(error)) as caught:
        namespace["fail"](error)
    return caught.value


def test_socket_errors_count_only_when_the_driver_raised_them() -> None:
    assert is_unavailable(_raised_in("asyncpg.connect_utils", ConnectionRefusedError()))
    assert is_unavailable(_raised_in("asyncpg.protocol", TimeoutError()))
    # The same errors from anything else (a webhook, our own code) are a 500.
    assert not is_unavailable(_raised_in("stockroom.webhooks.dispatcher", ConnectionRefusedError()))
    assert not is_unavailable(ConnectionRefusedError())
    # A driver's bug is still a bug.
    assert not is_unavailable(_raised_in("asyncpg.protocol", ValueError("bad")))


class _CannotConnectNowError(Exception):
    sqlstate = "57P03"


def test_a_failure_to_connect_counts_without_its_traceback() -> None:
    # One API key lookup's exception is raised to every request that waited for it, and
    # Starlette clears an exception's traceback once it has handled it: the next request's
    # copy has no driver frames. The mark made where it was raised still says whose it is.
    refused = _raised_in("asyncpg.connect_utils", ConnectionRefusedError())
    mark_connect_failure(refused)
    refused.__traceback__ = None
    assert is_unavailable(refused)
    starting = _CannotConnectNowError()
    mark_connect_failure(starting)
    assert is_unavailable(starting)
    # Marked or not, what no retry mends is a 500 (a wrong password, a missing database).
    denied = _PostgresError("28P01")
    mark_connect_failure(denied)
    assert not is_unavailable(denied)
    assert not failed_to_connect(ConnectionRefusedError())


async def test_the_engine_marks_a_refused_connection() -> None:
    settings = Settings(database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x")
    engine = create_engine(settings)
    try:
        with pytest.raises(ConnectionRefusedError) as caught:
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    assert failed_to_connect(caught.value)
    caught.value.__traceback__ = None
    assert is_unavailable(caught.value)
