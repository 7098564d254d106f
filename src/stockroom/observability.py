"""Logging and metrics.

Logging: JSON lines (one object a line) from structlog and the standard library alike. Each
line of a request carries its ``request_id``, bound in a context variable by the
request-context middleware. Uvicorn's own loggers go through the same renderer. The access
line, the one line every request writes, is rendered directly (:class:`AccessLog`).

Metrics: Prometheus, served at ``/metrics``. Each app has its own :class:`Metrics` (its own
registry, so several apps in one process, as in the tests, do not collide). With
``PROMETHEUS_MULTIPROC_DIR`` set (``stockroom serve --workers N`` sets it), every worker
writes its values to files there and ``/metrics`` on any worker answers for all of them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TextIO

import orjson
import structlog
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from stockroom.database import PoolStatus, ReplicaStatus

__all__ = [
    "ACCESS_LOGGER",
    "METRICS_CONTENT_TYPE",
    "MULTIPROC_DIR_VARIABLE",
    "AccessLog",
    "Metrics",
    "configure_logging",
    "watch_event_loop",
]

ACCESS_LOGGER = "stockroom.access"
METRICS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_SHARED_PROCESSORS: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _dumps(obj: object, default: object = None) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure_logging(level: int) -> None:
    """Send every log line, ours and uvicorn's, to stderr as one JSON object a line."""
    renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    structlog.configure(
        processors=[
            *_SHARED_PROCESSORS,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # A failed start-up is one line, with its reason (see the request-context middleware):
    # uvicorn's own line after it would only repeat it.
    logging.getLogger("uvicorn.error").filters[:] = [_repeated_startup_failure]
    # Stockroom writes its own access line (with route template and request id).
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request at info; each webhook attempt is in the database already.
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))


def _repeated_startup_failure(record: logging.LogRecord) -> bool:
    return record.getMessage() != "Application startup failed. Exiting."


class AccessLog:
    """One line per request: its id, method, route template, status and duration, as a JSON
    object with the same members as every other line (``event``, ``level``, ``logger``,
    ``timestamp``). Written straight to the log stream: through structlog's processors and
    the standard library's logging (record, handler, formatter) this one line cost more than
    all the rest of the middleware (see bench/RESULTS.md)."""

    def __init__(self, level: int, stream: TextIO | None = None) -> None:
        self.enabled = level <= logging.INFO
        self._stream = stream or sys.stderr

    def write(self, request_id: str, method: str, route: str, status: int, seconds: float) -> None:
        if not self.enabled:
            return
        line = {
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "event": "request",
            "request_id": request_id,
            "level": "info",
            "logger": ACCESS_LOGGER,
            "timestamp": dt.datetime.now(dt.UTC),
        }
        self._stream.write(orjson.dumps(line, option=_ACCESS_LINE_OPTIONS).decode())


_ACCESS_LINE_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE


class Metrics:
    """The service's Prometheus metrics. Labels are route templates, never raw paths, so
    their number stays bounded whatever clients send."""

    def __init__(self) -> None:
        # No "<name>_created" series: they double the output and no dashboard uses them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = os.environ.get(MULTIPROC_DIR_VARIABLE) or None
        registry = self.registry
        self.requests = Counter(
            "stockroom_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "stockroom_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route template "
            "and method.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        # Gauges of several workers add up: the whole instance's figure.
        self.in_flight = Gauge(
            "stockroom_http_requests_in_flight",
            "Requests being handled now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.pool_size = Gauge(
            "stockroom_db_pool_size",
            "Connections the database pool keeps open.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.pool_max = Gauge(
            "stockroom_db_pool_max",
            "Most connections the pool may open (size plus overflow).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.pool_checked_out = Gauge(
            "stockroom_db_pool_checked_out",
            "Pooled connections in use by requests now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.pool_overflow = Gauge(
            "stockroom_db_pool_overflow",
            "Connections open above the pool size now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.loop_lag = Histogram(
            "stockroom_event_loop_lag_seconds",
            "How late a probe scheduled every STOCKROOM_EVENT_LOOP_PROBE_SECONDS runs: "
            "time the event loop was blocked or saturated.",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

        self.webhook_deliveries = Counter(
            "stockroom_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered, retry (failed, will be "
            "retried) or failed (given up).",
            ["outcome"],
            registry=registry,
        )
        # The same database figure from every worker: the latest one is the answer.
        self.webhook_backlog = Gauge(
            "stockroom_webhook_backlog",
            "Webhook deliveries waiting to be sent (pending).",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.webhook_backlog_oldest = Gauge(
            "stockroom_webhook_backlog_oldest_seconds",
            "Age of the oldest event with a pending webhook delivery (0: none pending).",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.db_reads = Counter(
            "stockroom_db_reads",
            "Item, list and ledger reads by where they ran (primary or replica) and why "
            "(no token, caught up, behind, no replica serving, replica failed, token of "
            "another history). Only where replicas are configured.",
            ["target", "reason"],
            registry=registry,
        )
        self.replica_lag = Gauge(
            "stockroom_db_replica_lag_seconds",
            "How far behind the primary each replica was at its last sample.",
            ["replica"],
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.replica_serving = Gauge(
            "stockroom_db_replica_serving",
            "1 when the replica takes reads, 0 when it is excluded (lagging, unreachable).",
            ["replica"],
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.replicas_excluded = Gauge(
            "stockroom_db_replicas_excluded",
            "Replicas taking no reads now.",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self._reads_counted: dict[tuple[str, str], int] = {}

    def sample_replicas(
        self, replicas: list[ReplicaStatus], reads: Mapping[tuple[str, str], int]
    ) -> None:
        """The replicas (``Database.replica_status``) and the reads' routes so far."""
        if not replicas:
            return
        for replica in replicas:
            self.replica_serving.labels(replica.name).set(1 if replica.serving else 0)
            if replica.lag_seconds is not None:
                self.replica_lag.labels(replica.name).set(replica.lag_seconds)
        self.replicas_excluded.set(sum(not r.serving for r in replicas))
        for route, total in reads.items():
            counted = self._reads_counted.get(route, 0)
            if total > counted:
                self.db_reads.labels(*route).inc(total - counted)
                self._reads_counted[route] = total

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        # The labelled children, looked up once per label set (route templates are few).
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route, method),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def sample_pool(self, status: PoolStatus) -> None:
        """The requests' pool (``Database.pool_status``)."""
        self.pool_size.set(status.size)
        self.pool_max.set(status.maximum)
        self.pool_checked_out.set(status.checked_out)
        self.pool_overflow.set(status.overflow)

    def render(self) -> bytes:
        """The text exposition. In multiprocess mode it reads every worker's files, so
        call it off the event loop (``asyncio.to_thread``)."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def forget_this_process(self) -> None:
        """Drop this worker's live gauges from the shared files (at shutdown)."""
        if self.multiprocess_dir is not None and Path(self.multiprocess_dir).is_dir():
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]


async def watch_event_loop(metrics: Metrics, sample: Callable[[], None], interval: float) -> None:
    """Sleep ``interval`` again and again; every wake-up later than asked is time the loop
    could not run ready tasks (a blocking call, a CPU-bound handler, overload). Also
    refreshes the pool gauges, so that every worker's figures stay current."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval)
        metrics.loop_lag.observe(max(0.0, loop.time() - started - interval))
        sample()
