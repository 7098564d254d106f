"""Typed settings, read from ``STOCKROOM_*`` environment variables and a ``.env`` file.

Every setting is checked when it is read: a bad value raises :class:`SettingsError`, whose
message is one line naming the variable, so start-up can stop with a clear word instead of
a traceback. This module imports nothing from the rest of the package.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping
from typing import Annotated, Literal, get_args, get_origin
from urllib.parse import urlsplit

import limits
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = [
    "DEFAULT_DATABASE_URL",
    "ENV_PREFIX",
    "Backend",
    "Settings",
    "SettingsError",
    "load_settings",
    "reference_table",
    "unknown_variables",
]

ENV_PREFIX = "STOCKROOM_"
# The databases Stockroom runs on; each domain that differs by database has a store per one.
Backend = Literal["postgresql", "sqlite"]
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./stockroom.db"

# Plain driver names that we rewrite to the async driver we ship, so that a URL copied from
# another tool (``postgresql://``, ``postgres://``, ``sqlite:///``) just works.
_DRIVER_ALIASES = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}

_REDIS_SCHEMES = ("redis://", "rediss://")
# A host name, an IPv4 address, or an IPv6 address (urlsplit drops its brackets).
_ORIGIN_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?|[0-9a-f:.]*:[0-9a-f:.]*")

Seconds = Annotated[float, Field(gt=0, le=3600)]


class SettingsError(Exception):
    """A setting has a value Stockroom cannot use. ``str()`` is one line naming it."""


class Settings(BaseSettings):
    """Stockroom's settings. Each field is ``STOCKROOM_<FIELD NAME IN CAPITALS>``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL: sqlite+aiosqlite:///FILE or "
        "postgresql+asyncpg://USER@HOST/DB; for failover, several hosts "
        "(postgresql+asyncpg://USER@H1:P1,H2:P2/DB: the one that takes writes is used, see "
        "docs/operations.md, Failover).",
    )
    # All of the pool kept open, no overflow: under a steady load above the pool size an
    # overflow connection is opened and closed again and again (a server process each time).
    database_pool_size: int = Field(20, ge=1, le=1000, description="Connections kept in the pool.")
    database_background_pool_size: int = Field(
        5,
        ge=1,
        le=1000,
        description="PostgreSQL: connections for the background work and the admin endpoints "
        "(webhook dispatch, the event stream, API key checks, clean-ups), a pool apart from "
        "the requests' one. A process opens at most this plus the pool size (and overflow).",
    )
    database_max_overflow: int = Field(
        0, ge=0, le=1000, description="Extra connections allowed above the pool size."
    )
    database_pool_timeout: Seconds = Field(
        5.0, description="Seconds a request waits for a pooled connection before a 503."
    )
    database_connect_timeout: Seconds = Field(
        5.0, description="Seconds allowed to open a new database connection."
    )
    database_statement_timeout: Seconds = Field(
        30.0, description="Seconds a single SQL statement may run (PostgreSQL) before a 503."
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, le=1_073_741_824, description="Largest JSON request body in bytes."
    )
    auth: bool = Field(
        True,
        description="Require API keys (on). off opens every endpoint to anyone: local play only.",
    )
    auth_cache_seconds: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="Seconds a verified key is trusted without asking the database; a revoked "
        "key stops working on every instance within this time (0: ask every time).",
    )
    import_max_bytes: int = Field(
        1_073_741_824,
        ge=1024,
        le=1_099_511_627_776,
        description="Largest file POST /items/import reads, in bytes; larger is 413.",
    )
    idempotency_purge_seconds: Seconds = Field(
        600.0,
        description="How often expired idempotency records are deleted (in small batches, "
        "between requests).",
    )
    event_loop_probe_seconds: Seconds = Field(
        0.5,
        description="How often the event-loop probe wakes up; how late it wakes is the "
        "stockroom_event_loop_lag_seconds metric (it also refreshes the pool gauges).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level of log lines written (JSON, one object a line)."
    )
    database_pgbouncer: bool = Field(
        False,
        description="PostgreSQL is reached through PgBouncer in transaction mode: no "
        "server-side prepared statement cache, unique statement names, and the statement "
        "timeout set per transaction.",
    )
    database_replica_urls: str = Field(
        "",
        description="PostgreSQL: comma-separated URLs of streaming replicas (standbys) that "
        "answer item, list, summary and ledger reads; empty: every read on the primary. "
        "Read-your-writes through the Consistency-Token header (docs/api.md).",
    )
    database_replica_wait: Seconds = Field(
        0.1,
        description="Seconds a read with a Consistency-Token waits for a replica to replay "
        "past it before it is answered from the primary instead.",
    )
    database_replica_max_lag: Seconds = Field(
        5.0,
        description="A replica further behind the primary than this many seconds takes no "
        "reads until it catches up.",
    )
    database_replica_check_interval: Seconds = Field(
        0.5,
        description="How often each replica's lag and health are sampled; an excluded "
        "(unreachable) replica is tried again only this often.",
    )
    export_stall_timeout: Seconds = Field(
        60.0,
        description="PostgreSQL: seconds a GET /items/export waits for a client that has "
        "stopped reading; then the export ends (cut short) and the database connection it "
        "held is freed. The export has no statement timeout: it lasts as long as its client "
        "reads.",
    )
    shutdown_timeout: Seconds = Field(
        30.0,
        description="Seconds in-flight requests get to finish after SIGTERM; any still "
        "running then is answered 503 and rolled back.",
    )
    rate_limit: str = Field(
        "",
        description="Requests allowed per API key (per client address when auth is off), "
        "in the limits library's notation, e.g. 600/minute or 10/second; empty: no limit.",
    )
    redis_url: str = Field(
        "",
        description="Redis that keeps rate limit budgets, shared by every instance "
        "(redis://HOST:6379/0); empty: each process counts in its own memory.",
    )

    webhook_dispatcher: bool = Field(
        True,
        description="Deliver webhooks from inside stockroom serve (off: run stockroom worker "
        "for that, or nothing is delivered).",
    )
    webhook_allow_private: bool = Field(
        False,
        description="Allow webhook URLs whose host is a loopback, private, link-local, "
        "multicast or reserved address (off: 422 at creation, refused at delivery).",
    )
    webhook_backoff_seconds: Seconds = Field(
        2.0,
        description="First retry of a failed delivery after about this long; each next "
        "waits twice as long (with jitter, at most an hour).",
    )
    webhook_max_attempts: int = Field(
        12, ge=1, le=100, description="Attempts of one delivery before it is marked failed."
    )
    webhook_max_age_seconds: float = Field(
        86_400.0,
        gt=0,
        le=604_800,
        description="A delivery still failing this long after its event is marked failed.",
    )
    webhook_backlog_seconds: Seconds = Field(
        5.0,
        description="How often the webhook backlog gauges of /metrics are refreshed (one "
        "query each time).",
    )
    webhook_connect_timeout: Seconds = Field(
        5.0, description="Seconds to connect to a webhook URL before the attempt fails."
    )
    webhook_timeout: Seconds = Field(
        10.0, description="Seconds to wait for a webhook's answer (each read and write)."
    )
    webhook_lease_seconds: Seconds = Field(
        30.0,
        description="Seconds a claimed delivery is held beyond the longest one attempt can "
        "take (the connect timeout plus 3 times the timeout): a dispatcher that dies leaves "
        "its claims to another after that sum (65 s by default).",
    )
    webhook_concurrency: int = Field(
        64, ge=1, le=1000, description="Deliveries in flight at once, per process."
    )
    webhook_concurrency_per_webhook: int = Field(
        8,
        ge=1,
        le=1000,
        description="Deliveries in flight at once to one webhook, per process: a slow "
        "receiver holds no more than this many of the process's slots.",
    )
    events_retention_days: int = Field(
        7,
        ge=7,
        le=3650,
        description="Days the event log is kept (for GET /events replay and deliveries).",
    )
    events_poll_seconds: float = Field(
        0.2,
        gt=0,
        le=10,
        description="Longest a reader of the event log sleeps without a wake-up (SQLite, "
        "PgBouncer, or a lost LISTEN connection).",
    )
    events_prune_seconds: Seconds = Field(
        3600.0,
        description="How often events older than the retention are deleted from the log "
        "(in small batches, between requests).",
    )
    events_heartbeat_seconds: Seconds = Field(
        15.0, description="A comment line is sent on an idle GET /events stream this often."
    )
    events_retry_seconds: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="When a GET /events stream drops, browsers reconnect after this long: "
        "sent as the stream's first line (retry: in milliseconds); 0: not sent, each client "
        "keeps its own delay (about 3 s in browsers).",
    )
    events_stream_buffer: int = Field(
        1000,
        ge=10,
        le=100_000,
        description="Events queued for one GET /events client; one that falls further "
        "behind is disconnected and resumes by Last-Event-ID.",
    )

    cors_origins: str = Field(
        "",
        description="Comma-separated origins (scheme://host[:port]) whose pages may call the "
        "API from a browser, or * for any; empty: no CORS headers at all.",
    )
    events_token_seconds: float = Field(
        3600.0,
        ge=1,
        le=86_400,
        description="Lifetime of a stream token from POST /events/tokens (for a browser's "
        "EventSource); a stream opened with one ends when it expires.",
    )
    export_token_seconds: float = Field(
        300.0,
        ge=1,
        le=3600,
        description="Lifetime of an export token from POST /items/export/tokens (a download "
        "link's credential for GET /items/export); a download it started runs to its end.",
    )
    events_token_secret: str = Field(
        "",
        description="Optional extra secret mixed into stream and export token signatures, "
        "the same on every instance (at least 32 characters), so that a copy of the "
        "database alone cannot mint tokens; empty: tokens are signed with a key derived from "
        "the API key's stored hash only.",
    )

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        url = normalise_database_url(value)
        attrs = url.query.get("target_session_attrs")
        if attrs is not None and attrs != "read-write":
            raise ValueError(
                "the primary's target_session_attrs must be read-write (writes never go to "
                "a standby)"
            )
        return url.render_as_string(hide_password=False)

    @field_validator("database_replica_urls")
    @classmethod
    def _check_replica_urls(cls, value: str) -> str:
        urls = [part.strip() for part in value.split(",") if part.strip()]
        for url in urls:
            if normalise_database_url(url).get_backend_name() != "postgresql":
                raise ValueError("replicas must be PostgreSQL URLs (postgresql://USER@HOST/DB)")
            if isinstance(normalise_database_url(url).query.get("host"), tuple):
                raise ValueError("a replica URL names one server (one URL per replica)")
        return ",".join(
            normalise_database_url(url).render_as_string(hide_password=False) for url in urls
        )

    @model_validator(mode="after")
    def _replicas_need_postgresql(self) -> Settings:
        if self.database_replica_urls and self.backend == "sqlite":
            raise ValueError("database_replica_urls needs a PostgreSQL database_url")
        return self

    @field_validator("rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        value = value.strip()
        if value:
            try:
                parsed = limits.parse_many(value)
            except ValueError:
                parsed = []
            if len(parsed) != 1 or parsed[0].amount < 1:
                raise ValueError(f"{value!r} is not one rate limit (expected e.g. 600/minute)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(_REDIS_SCHEMES):
            raise ValueError("not a Redis URL (expected redis://HOST:PORT/DB or rediss://...)")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_cors_origins(cls, value: str) -> str:
        origins = [part.strip() for part in value.split(",") if part.strip()]
        if origins == ["*"]:
            return "*"
        for origin in origins:
            if not _is_origin(origin):
                raise ValueError(
                    f"{origin!r} is not an origin (expected scheme://host[:port] with no "
                    "path, e.g. https://app.example.com, or * alone)"
                )
        return ",".join(origins)

    @field_validator("events_token_secret")
    @classmethod
    def _check_events_token_secret(cls, value: str) -> str:
        if value and len(value) < 32:
            raise ValueError("too short: use at least 32 random characters, or leave it empty")
        return value

    @property
    def database_replica_url_list(self) -> list[str]:
        return self.database_replica_urls.split(",") if self.database_replica_urls else []

    @property
    def cors_origin_list(self) -> list[str]:
        return self.cors_origins.split(",") if self.cors_origins else []

    @property
    def rate_limit_item(self) -> limits.RateLimitItem | None:
        return limits.parse(self.rate_limit) if self.rate_limit else None

    @property
    def database(self) -> URL:
        return make_url(self.database_url)

    @property
    def backend(self) -> Backend:
        """Which database: the key by which the lifespan picks each domain's store."""
        return "sqlite" if self.database.get_backend_name() == "sqlite" else "postgresql"

    @property
    def log_level_number(self) -> int:
        return logging.getLevelNamesMapping()[self.log_level.upper()]


def _is_origin(value: str) -> bool:
    """An origin as a browser sends it in ``Origin``: ``http(s)://host[:port]``, lower case,
    no user, path, query or fragment, and no default port written out."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return False
    default_port = {"http": 80, "https": 443}.get(parts.scheme)
    return (
        default_port is not None
        and _ORIGIN_HOST.fullmatch(parts.hostname or "") is not None
        and value == value.lower()
        and f"{parts.scheme}://{parts.netloc}" == value
        and "@" not in parts.netloc
        and port != default_port
        and not parts.netloc.endswith(":")
    )


def normalise_database_url(value: str) -> URL:
    """Parse a database URL and pin it to the async driver Stockroom uses."""
    try:
        url = make_url(_hosts_into_query(value))
    except (ArgumentError, ValueError):
        raise ValueError(
            "not a database URL (expected e.g. postgresql+asyncpg://HOST/DB)"
        ) from None
    driver = _DRIVER_ALIASES.get(url.drivername)
    if driver is None:
        raise ValueError(
            f"unsupported scheme {url.drivername!r} (use postgresql+asyncpg:// or sqlite+aiosqlite://)"
        )
    if driver.startswith("postgresql") and not url.database:
        raise ValueError("a PostgreSQL URL needs a database name")
    if driver.startswith("postgresql"):
        url = _several_hosts(url)
    return url.set(drivername=driver)


def _hosts_into_query(value: str) -> str:
    """libpq's form of several hosts (``postgresql://USER@H1:P1,H2:P2/DB``) as SQLAlchemy's
    (``postgresql://USER@/DB?host=H1:P1&host=H2:P2``); any other URL as it is."""
    scheme, separator, rest = value.partition("://")
    netloc, slash, path = rest.partition("/")
    auth, at, hostlist = netloc.rpartition("@")
    if not separator or "," not in hostlist:
        return value
    path, mark, query = path.partition("?")
    hosts = "&".join(f"host={host}" for host in hostlist.split(",") if host)
    return f"{scheme}://{auth}{at}{slash}{path}?{hosts}{'&' if mark and query else ''}{query}"


_HOST_PORT = re.compile(r".*:[0-9]+")


def _several_hosts(url: URL) -> URL:
    """A PostgreSQL URL's hosts in one form: one ``host=HOST:PORT`` query parameter each
    (a port written out, 5432 if none was) and, where there are several (a primary and its
    standbys: failover), ``target_session_attrs=read-write`` unless the URL says otherwise:
    only a server that takes writes is used."""
    given = url.query.get("host")
    if given is None:
        return url
    hosts = [
        host.strip()
        for part in ((given,) if isinstance(given, str) else given)
        for host in part.split(",")
        if host.strip()
    ]
    if len(hosts) < 2:
        return url
    hosts = [host if _HOST_PORT.fullmatch(host) else f"{host}:5432" for host in hosts]
    query: dict[str, str | tuple[str, ...]] = {"host": tuple(hosts)}
    if "target_session_attrs" not in url.query:
        query["target_session_attrs"] = "read-write"
    return url.update_query_dict(query)


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning pydantic's report into one line per bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


# Variables of the test suite, not of the service (STOCKROOM_TEST_POSTGRES_URL).
_NOT_SETTINGS_PREFIX = ENV_PREFIX + "TEST_"


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per ``STOCKROOM_*`` variable that names no setting (a misspelling is
    otherwise silently ignored), with the closest known name if there is one."""
    known = [name.upper() for name in Settings.model_fields]
    lines = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith(ENV_PREFIX) or upper.startswith(_NOT_SETTINGS_PREFIX):
            continue
        name = upper.removeprefix(ENV_PREFIX)
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
        lines.append(f"{variable} is not a setting and is ignored{hint}")
    return lines


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        field = str(error["loc"][0]) if error["loc"] else "?"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{ENV_PREFIX}{field.upper()}: {message}")
    return "invalid setting " + "; ".join(parts)


def reference_table() -> str:
    """Every setting as a Markdown table (variable, type and limits, default, meaning),
    made from the model so that docs/operations.md cannot drift from it."""
    rows = [
        "| variable | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "(empty)" if default == "" else f"`{_env_value(default)}`"
        rows.append(
            f"| `{ENV_PREFIX}{name.upper()}` | {_type_of(field)} | {shown} "
            f"| {field.description or ''} |"
        )
    return "\n".join(rows) + "\n"


def _env_value(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _type_of(field: FieldInfo) -> str:
    annotation = field.annotation
    if get_origin(annotation) is Literal:
        return " / ".join(f"`{choice}`" for choice in get_args(annotation))
    kind = {bool: "on/off", int: "integer", float: "seconds", str: "text"}.get(
        annotation,  # type: ignore[arg-type]
        str(annotation),
    )
    bounds = []
    for rule in field.metadata:
        for attribute, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            bound = getattr(rule, attribute, None)
            if bound is not None:
                bounds.append(f"{symbol} {_env_value(bound)}")
    return f"{kind} ({', '.join(bounds)})" if bounds else kind
