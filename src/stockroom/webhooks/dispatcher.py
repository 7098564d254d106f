"""The webhook dispatcher: sends due deliveries, in parallel with a bound, and records each
attempt. Runs inside ``stockroom serve`` (unless ``STOCKROOM_WEBHOOK_DISPATCHER=off``) or
alone as ``stockroom worker``; any number of them may share one PostgreSQL.

One loop: turn new events into deliveries (``queue.fan_out``), claim due deliveries in
batches (``queue.claim``, with the store of the database it is on), start a task per
delivery as slots free up, sleep until woken (a new event, a webhook running short of
claimed deliveries) or the poll interval. Steps are at least ``_STEP_GAP`` apart, so a
burst of commits costs one fan-out and one claim, not one each. Outcomes are written in
batches by a second task. At a thousand deliveries a second the
database sees a few dozen transactions a second, not thousands.

Two bounds: ``STOCKROOM_WEBHOOK_CONCURRENCY`` deliveries in flight in all, and
``STOCKROOM_WEBHOOK_CONCURRENCY_PER_WEBHOOK`` to any one webhook. A receiver that hangs
holds only its own share of the slots, claims skip a webhook that already has a round
waiting, and the others go on. The per-webhook bound also keeps the connection pool small:
httpx's pool does work for every pooled connection each time a request starts or ends.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import math
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stockroom import __version__
from stockroom.db import utcnow
from stockroom.events.wakeup import Wakeup
from stockroom.observability import Metrics
from stockroom.resources import Resources
from stockroom.settings import Settings
from stockroom.webhooks import queue
from stockroom.webhooks.queue import DELIVERED, FAILED, PENDING, Claimed, Outcome
from stockroom.webhooks.security import GuardedTransport, secret_key, sign
from stockroom.webhooks.store import DeliveryStore

__all__ = ["MAX_RESPONSE_BYTES", "Dispatcher", "create_http_client", "dispatching"]

# A receiver's answer is read up to this much (and thrown away): enough to keep the
# connection for the next delivery, never a memory risk.
MAX_RESPONSE_BYTES = 64 * 1024
MAX_BACKOFF_SECONDS = 3600.0
_SAVE_EVERY = 0.02  # seconds outcomes gather before they are written together
_STEP_GAP = 0.01  # seconds at least between two steps (wake-ups in between are one)
_FAN_OUT_GAP = 0.05  # seconds at least between two fan-outs of new events
# ... while fan-outs make no delivery (no webhook, or none wants these events): under a
# stream of writes, a fan-out and the claim after it (about ten statements) every 50 ms
# took a noticeable share of the writes' CPU (docs/async.md); the first matching event
# waits at most this much longer.
_IDLE_FAN_OUT_GAP = 0.25
_CLAIM_ROUNDS = 4  # a claim takes up to this many rounds of a webhook's in-flight bound
_RETRY_SECONDS = 1.0
_USER_AGENT = f"Stockroom-Webhooks/{__version__}"

log = structlog.get_logger("stockroom.webhooks")


def create_http_client(settings: Settings) -> httpx.AsyncClient:
    """The one outbound HTTP client of a process: timeouts on everything, a bounded pool,
    no redirects, no proxy from the environment, no cookies, the SSRF check at every
    connect."""
    limits = httpx.Limits(
        max_connections=settings.webhook_concurrency,
        max_keepalive_connections=settings.webhook_concurrency,
    )
    timeout = httpx.Timeout(
        settings.webhook_timeout,
        connect=settings.webhook_connect_timeout,
        pool=settings.webhook_connect_timeout,
    )
    return httpx.AsyncClient(
        transport=GuardedTransport(limits=limits, allow_private=settings.webhook_allow_private),
        timeout=timeout,
        follow_redirects=False,
        headers={"user-agent": _USER_AGENT},
        # A cookie one receiver sets is kept by no one: it would go out with every later
        # delivery to that host, whichever webhook they belong to.
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )


@functools.lru_cache(maxsize=1024)
def _parsed_url(url: str) -> httpx.URL:
    return httpx.URL(url)


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        wakeup: Wakeup,
        client: httpx.AsyncClient,
        store: DeliveryStore,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._store = store
        self._wakeup = wakeup
        self._flag = wakeup.reader()
        self._client = client
        self._metrics = metrics
        # One attempt may take this long in all; the claim lasts longer than that.
        self._attempt_limit = settings.webhook_connect_timeout + 3 * settings.webhook_timeout
        self._lease = dt.timedelta(seconds=self._attempt_limit + settings.webhook_lease_seconds)
        self._concurrency = settings.webhook_concurrency
        self._per_webhook = min(settings.webhook_concurrency_per_webhook, self._concurrency)
        self._in_flight: dict[asyncio.Task[None], Claimed] = {}
        self._busy: Counter[str] = Counter()  # in flight, by webhook id
        # Claimed, not started yet, by webhook id: (monotonic time after which the lease no
        # longer covers a whole attempt, delivery).
        self._ready: dict[str, deque[tuple[float, Claimed]]] = {}
        self._outcomes: list[Outcome] = []
        self._outcome_ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._last_fan_out = -_IDLE_FAN_OUT_GAP
        self._fan_out_gap = _FAN_OUT_GAP  # the idle one after a fan-out without deliveries
        self._fan_out_owed = False  # a step came too soon after a fan-out to do one
        # Whether the next step should claim (see _step): at first, and whenever a fan-out
        # may have made deliveries, claimed deliveries run short, or a claim came back full.
        self._claim_owed = True
        self._last_claim = -math.inf
        self._closing = False

    async def run(self) -> None:
        """Dispatch until :meth:`stop`; then finish (or give back) what is in flight."""
        saver = asyncio.create_task(self._save_outcomes(), name="webhook-outcomes")
        try:
            while not self._stopping.is_set():
                started = time.monotonic()
                try:
                    await self._step()
                except Exception as exc:
                    log.warning("webhook dispatch step failed; retrying", error=str(exc))
                    await asyncio.sleep(_RETRY_SECONDS)
                    continue
                owed = self._last_fan_out + self._fan_out_gap - time.monotonic()
                await self._wakeup.wait(self._flag, at_most=owed if self._fan_out_owed else None)
                gap = started + _STEP_GAP - time.monotonic()
                if gap > 0 and not self._stopping.is_set():
                    await asyncio.sleep(gap)
        finally:
            await self._wind_down()
            # Not cancelled mid-write: the saver finishes the batch it is writing, then stops.
            self._closing = True
            self._outcome_ready.set()
            await saver
            await self._flush_outcomes()

    def stop(self) -> None:
        self._stopping.set()
        self._flag.set()

    async def _step(self) -> None:
        async with self._sessions() as session:
            # New events become deliveries at most every _FAN_OUT_GAP (_IDLE_FAN_OUT_GAP
            # while they make none): under a stream of commits each fan-out takes a batch
            # of them (one transaction), while steps for claims can come faster.
            now = time.monotonic()
            if now >= self._last_fan_out + self._fan_out_gap:
                self._last_fan_out, self._fan_out_owed = now, False
                # A long backlog (an import's events) is passed a batch per transaction; a
                # stop does not wait for the rest: the cursor moved with each batch, and the
                # next start goes on from there.
                made = 0
                while True:
                    passed = await queue.fan_out(session)
                    made += passed.deliveries
                    if passed.events < queue.FAN_OUT_BATCH or self._stopping.is_set():
                        break
                if made:
                    self._claim_owed = True
                self._fan_out_gap = _FAN_OUT_GAP if made else _IDLE_FAN_OUT_GAP
            else:
                self._fan_out_owed = True
            # Claimed deliveries are topped up to about twice the concurrency, a batch at a
            # time, from webhooks that do not have a round waiting already. Those waiting
            # for a webhook at its own bound do not count: they cannot use a free slot.
            startable = sum(
                len(waiting)
                for webhook_id, waiting in self._ready.items()
                if self._busy[webhook_id] < self._per_webhook
            )
            want = 2 * self._concurrency - len(self._in_flight) - startable
            # A step woken by a commit whose events wait for the next fan-out has nothing
            # new to claim: deliveries come from fan-outs (this instance's, or another's,
            # and retries coming due, both found at least every poll interval). Under a
            # stream of writes that skips four claims in five (a query each).
            claim_due = self._claim_owed or now >= self._last_claim + self._wakeup.poll_interval
            if claim_due and want >= max(1, self._concurrency // 2) and not self._stopping.is_set():
                self._claim_owed = False
                self._last_claim = now
                stocked = [
                    w for w, waiting in self._ready.items() if len(waiting) >= self._per_webhook
                ]
                before = time.monotonic()
                claimed = await queue.claim(
                    session,
                    self._store,
                    want,
                    self._lease,
                    per_webhook=_CLAIM_ROUNDS * self._per_webhook,
                    skip=stocked,
                )
                usable_until = before + self._lease.total_seconds() - self._attempt_limit
                for delivery in claimed:
                    self._ready.setdefault(delivery.webhook_id, deque()).append(
                        (usable_until, delivery)
                    )
                if len(claimed) == want:
                    self._claim_owed = True
                    self._flag.set()  # there may be more, of webhooks this claim left out
        self._start_ready()

    def _start_ready(self) -> None:
        now = time.monotonic()
        for webhook_id in list(self._ready):
            if len(self._in_flight) >= self._concurrency or self._stopping.is_set():
                return
            if self._busy[webhook_id] >= self._per_webhook:
                continue
            # Taken out and put back at the end: when the overall bound binds, the webhooks
            # take turns.
            waiting = self._ready.pop(webhook_id)
            while (
                waiting
                and self._busy[webhook_id] < self._per_webhook
                and len(self._in_flight) < self._concurrency
            ):
                usable_until, delivery = waiting.popleft()
                if now > usable_until:
                    # Waited so long that its lease could end mid-attempt and another
                    # instance send it too: left; it is due again when the lease ends.
                    continue
                task = asyncio.create_task(self._deliver(delivery), name="webhook-delivery")
                self._in_flight[task] = delivery
                self._busy[webhook_id] += 1
                task.add_done_callback(self._finished)
            if waiting:
                self._ready[webhook_id] = waiting

    def _finished(self, task: asyncio.Task[None]) -> None:
        delivery = self._in_flight.pop(task, None)
        if delivery is not None:
            self._busy[delivery.webhook_id] -= 1
            if self._busy[delivery.webhook_id] <= 0:
                del self._busy[delivery.webhook_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery crashed", error=str(task.exception()))
        self._start_ready()
        if delivery is not None and len(self._ready.get(delivery.webhook_id, ())) < (
            self._per_webhook
        ):
            self._claim_owed = True
            self._flag.set()  # this webhook is running short: claim more

    async def _deliver(self, delivery: Claimed) -> None:
        body = delivery.body.encode()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(
                secret_key(delivery.secret), delivery.event_id, timestamp, body
            ),
        }
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self._attempt_limit):
                # build_request + send(stream=True) rather than client.stream(): the same
                # request with less CPU in httpx (docs/async.md), and the URL parsed once per
                # webhook.
                request = self._client.build_request(
                    "POST", _parsed_url(delivery.url), content=body, headers=headers
                )
                response = await self._client.send(request, stream=True)
                try:
                    status = response.status_code
                    read = 0
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read >= MAX_RESPONSE_BYTES:
                            break
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            error = "timeout: no answer in time"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:200]
        if error is not None:
            status = None
        duration_ms = round((time.perf_counter() - started) * 1000)
        self._record(self._judge(delivery, status, error, duration_ms))

    def _judge(
        self, delivery: Claimed, status: int | None, error: str | None, duration_ms: int
    ) -> Outcome:
        now = utcnow()
        attempt = delivery.attempts + 1
        next_attempt: dt.datetime | None = None
        if status is not None and 200 <= status < 300:
            state = DELIVERED
        elif (
            attempt >= self._settings.webhook_max_attempts
            or (now - delivery.event_created_at).total_seconds()
            >= self._settings.webhook_max_age_seconds
        ):
            state = FAILED
        else:
            state = PENDING
            wait = self._settings.webhook_backoff_seconds * 2 ** (attempt - 1)
            wait = min(wait, MAX_BACKOFF_SECONDS) * random.uniform(0.8, 1.2)
            next_attempt = now + dt.timedelta(seconds=wait)
        if error is None and state != DELIVERED:
            error = f"HTTP {status}: not a 2xx"
        return Outcome(delivery, state, status, error, duration_ms, next_attempt, now)

    def _record(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)
        self._outcome_ready.set()
        if self._metrics is not None:
            result = "retry" if outcome.status == PENDING else outcome.status
            self._metrics.webhook_deliveries.labels(result).inc()

    async def _save_outcomes(self) -> None:
        while True:
            await self._outcome_ready.wait()
            if self._closing:
                return  # run() writes what is left
            await asyncio.sleep(_SAVE_EVERY)
            self._outcome_ready.clear()
            try:
                await self._flush_outcomes()
            except Exception as exc:
                log.warning("cannot record webhook attempts; retrying", error=str(exc))
                self._outcome_ready.set()
                await asyncio.sleep(_RETRY_SECONDS)
            if self._closing:  # (its wake-up may have been cleared above)
                return

    async def _flush_outcomes(self) -> None:
        batch, self._outcomes = self._outcomes, []
        try:
            async with self._sessions() as session:
                await queue.save_outcomes(session, batch)
        except BaseException:
            self._outcomes[:0] = batch  # keep them for the next try
            raise

    async def _wind_down(self) -> None:
        """Let deliveries in flight finish within the shutdown timeout; give the others
        back for another instance (their lease would otherwise hold them)."""
        # Claimed but not started: given back at once, another instance can send them now.
        not_started = [delivery for waiting in self._ready.values() for _, delivery in waiting]
        self._ready.clear()
        await self._give_back(not_started, "not started")
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=self._settings.shutdown_timeout)
        unfinished = dict(self._in_flight)
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.wait(set(unfinished))
        await self._give_back(list(unfinished.values()), "unfinished")

    async def _give_back(self, deliveries: list[Claimed], which: str) -> None:
        if not deliveries:
            return
        try:
            async with self._sessions() as session:
                await queue.release(session, deliveries)
        except Exception as exc:
            log.warning("cannot give back webhook deliveries", which=which, error=str(exc))
        else:
            log.info("gave back webhook deliveries", which=which, count=len(deliveries))


@asynccontextmanager
async def dispatching(resources: Resources) -> AsyncIterator[Dispatcher]:
    """Run a dispatcher, on the process's HTTP client, for the duration of the block."""
    dispatcher = Dispatcher(
        resources.settings,
        resources.sessions,
        resources.wakeup,
        resources.http,
        resources.stores.deliveries,
        resources.metrics,
    )
    task = asyncio.create_task(dispatcher.run(), name="webhook-dispatcher")
    try:
        yield dispatcher
    finally:
        dispatcher.stop()
        await task
