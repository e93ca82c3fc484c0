"""The outbox sender: delivers pending outbound `message_log` rows to the Graph API, in order.

The processor writes what a turn says as outbound rows (status "pending", body
`{"payload", "tag", "seconds", "source"}`, kind "message" | "sender_action" | "pause" |
"pass_thread" | "take_thread") in the same transaction as the conversation state, then calls
`Sender.notify(page_id, psid)`. The sender then:

- sends each conversation's rows in id order, one at a time: the next goes out after Meta
  accepted the previous one (reference §15.6: concurrent sends scramble the order);
- runs conversations concurrently (at most `max_in_flight` calls at once, `max_in_flight_per_page`
  for one page, so a slow page cannot take every connection), and a conversation that waits
  (a `pause` row, a backoff) holds no connection and blocks nobody;
- limits each page to `rate` calls per second (`server.ratelimit`);
- retries transient and rate-limit errors with exponential backoff and jitter, keeping the
  order; a rate-limit error also pauses the page's other conversations for that delay;
- on a rejected token (190) marks the page unhealthy and leaves its rows pending; they go out
  when the token is replaced (`flowc page add`), which the sender notices within
  `page_check_interval` seconds;
- records the outcome on the row: "sent" with Meta's message id as `mid` and `sent_at`, or
  "failed" with `error_code`, `error_subcode` and `error_message` (an unreachable user, a closed
  24-hour window, any permanent error, or retries exhausted);
- at start, resumes every pending row.

Several server instances on one PostgreSQL database ("shared" mode) send a conversation's rows
from one instance at a time: an instance takes the conversation's lease in `outbox_leases`
before loading its rows, renews all its leases every quarter of `lease_seconds`, starts no send
for a conversation whose lease it has not renewed for half of `lease_seconds`, and gives the
lease back once the conversation's outcomes are written. Rows another instance holds are left
to it; a notified conversation whose lease is taken is tried again shortly (its holder may have
finished before our rows were committed). Every `lease_seconds / 2` each instance also picks
up pending rows of healthy pages whose conversation has no live lease: a crashed instance's
rows are sent by another after at most `lease_seconds`.

Delivery is at least once: a row whose send was in flight when the process died is sent again
after the restart or by the instance that takes its lease over (the Send API has no
idempotency key), and so is a send that timed out but had in fact reached Meta. Everything else
goes out exactly once. (A `pause` cut short by a restart is waited again in full.)

Status updates of all conversations are written in batches by one writer task (one transaction
per batch), and the rows of all notified conversations are read by one loader task: the
database sees a few statements per batch, not several per message. Both run in worker threads
(SQLAlchemy is synchronous)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from sqlalchemy import Engine, bindparam, exc, select, text

from runtime import tables
from server.graph import (
    DEFAULT_MAX_CONNECTIONS,
    ErrorKind,
    GraphClient,
    GraphError,
    message_body,
    sender_action_body,
)
from server.pages import PageCredentials, PageRegistry
from server.ratelimit import PageRateLimiter
from server.rawsql import bind_processor, mark

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (page_id, psid)
T = TypeVar("T")
Outcome = Literal["sent", "failed", "retry", "held"]

#: At most this many conversations per query when loading rows.
_LOAD_CHUNK = 500
#: Rows per query when resuming everything at start.
_RESUME_PAGE = 2000


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for transient and rate-limit errors.

    Attempt n waits `min(max_delay, base_delay * 2**(n-1))`, shortened by up to `jitter` (a
    fraction) at random so that conversations failing together do not retry together. Meta's
    own hint (Retry-After, estimated_time_to_regain_access) is honoured up to `max_hint`. After
    `max_attempts` failed attempts the row is marked failed with the last error."""

    base_delay: float = 0.5
    max_delay: float = 60.0
    max_attempts: int = 10
    jitter: float = 0.5
    max_hint: float = 3600.0

    def delay(self, attempt: int, rng: random.Random, hint: float | None = None) -> float:
        """Seconds to wait after the `attempt`-th failure (1-based)."""
        backoff = min(self.max_delay, self.base_delay * 2 ** max(0, attempt - 1))
        backoff *= 1.0 - self.jitter * rng.random()
        if hint:
            backoff = max(backoff, min(hint, self.max_hint))
        return backoff


@dataclass(frozen=True)
class SendResult:
    """One attempt's outcome, for metrics.

    outcome: "sent"; "failed" (final, recorded on the row); "retry" (will be tried again
    after a backoff); "held" (the page's token was rejected: the row stays pending).
    `error_code` is "code" or "code/subcode" ("-" when Meta gave none); `seconds` is the Graph
    API call's duration (0 for pauses)."""

    page_id: str
    psid: str
    row_id: int
    kind: str
    outcome: Outcome
    error_kind: ErrorKind | None = None
    error_code: str | None = None
    seconds: float = 0.0


#: Called with every `SendResult`, e.g. to count sends in Prometheus:
#: `on_result=lambda r: metrics.send_outcome(r.outcome, r.error_code)`.
SendHook = Callable[[SendResult], None]


@dataclass
class _Row:
    id: int
    kind: str
    body: dict[str, Any]
    attempts: int = 0


@dataclass
class _Conversation:
    key: Key
    rows: deque[_Row] = field(default_factory=deque)
    last_id: int = 0  # highest row id queued
    done_id: int = 0  # highest row id whose outcome is recorded (or queued for writing)
    flushed: asyncio.Future[None] | None = None  # the batch holding our last status write
    task: asyncio.Task[None] | None = None


#: A row's outcome as the writer stores it: status, mid, sent_at, error code, error subcode,
#: error message, row id (the order of `_record_sql`'s parameters).
_Outcome = tuple[str, str | None, datetime | None, int | None, int | None, str | None, int]


@dataclass
class _Batch:
    rows: list[_Outcome]
    done: asyncio.Future[None]


class _Hold(Exception):
    """The page cannot send now (token rejected or page unknown): keep the rows pending."""


_M = tables.message_log
_MC = _M.c
# Literal predicates, so that an index on pending rows (WHERE status = 'pending') can serve them.
_PENDING_OUT = text("status = 'pending' AND direction = 'outbound'")
_LOAD_COLUMNS = (_MC.id, _MC.page_id, _MC.psid, _MC.kind, _MC.body)
_LOAD_FOR = (
    select(*_LOAD_COLUMNS)
    .where(
        _PENDING_OUT,
        _MC.page_id == bindparam("page_id"),
        _MC.psid.in_(bindparam("psids", expanding=True)),
    )
    .order_by(_MC.id)
)
_RESUME = (
    select(*_LOAD_COLUMNS)
    .where(_PENDING_OUT, _MC.id > bindparam("after"))
    .order_by(_MC.id)
    .limit(_RESUME_PAGE)
)
#: The outcome of a row, as driver SQL for executemany: the writer's hot path, one row per
#: send (SQLAlchemy's per-row parameter handling cost more than the UPDATE itself).
_RECORD_COLUMNS = ("status", "mid", "sent_at", "error_code", "error_subcode", "error_message")


def _record_sql(engine: Engine) -> str:
    placeholder = mark(engine)
    assignments = ", ".join(f"{column} = {placeholder}" for column in _RECORD_COLUMNS)
    return f"UPDATE message_log SET {assignments} WHERE id = {placeholder} AND status = 'pending'"


# Leases (shared mode, PostgreSQL only). Expiry uses the database's clock, which every
# instance shares, never the instances' own. Every statement locks lease rows in one order
# (keys sorted as Python sorts them = COLLATE "C"), so instances never deadlock on them.
_ACQUIRE = text(
    "INSERT INTO outbox_leases (page_id, psid, owner, expires_at) "
    "SELECT k.page_id, k.psid, :owner, now() + make_interval(secs => :ttl) "
    "FROM unnest(CAST(:pages AS text[]), CAST(:psids AS text[])) AS k(page_id, psid) "
    "ON CONFLICT (page_id, psid) DO UPDATE SET owner = EXCLUDED.owner, "
    "expires_at = EXCLUDED.expires_at "
    "WHERE outbox_leases.owner = EXCLUDED.owner OR outbox_leases.expires_at < now() "
    "RETURNING page_id, psid"
)
#: Our lease rows among the given keys, locked in key order.
_OURS = (
    "(page_id, psid) IN (SELECT page_id, psid FROM outbox_leases WHERE owner = :owner "
    "AND (page_id, psid) IN (SELECT * FROM unnest(CAST(:pages AS text[]), "
    'CAST(:psids AS text[]))) ORDER BY page_id COLLATE "C", psid COLLATE "C" FOR UPDATE)'
)
_RENEW = text(
    "UPDATE outbox_leases SET expires_at = now() + make_interval(secs => :ttl) "
    f"WHERE {_OURS} RETURNING page_id, psid"
)
_RELEASE = text(f"DELETE FROM outbox_leases WHERE {_OURS}")
_RELEASE_ALL = text("DELETE FROM outbox_leases WHERE owner = :owner")
#: Pending rows whose conversation nobody holds: at start all of them (unknown and refused
#: pages' rows are then held, as on one instance), on sweeps those of healthy pages only.
_ORPHANS_SQL = (
    "SELECT m.id, m.page_id, m.psid, m.kind, m.body FROM message_log m {pages}"
    "LEFT JOIN outbox_leases l ON l.page_id = m.page_id AND l.psid = m.psid "
    "AND l.expires_at > now() "
    "WHERE m.status = 'pending' AND m.direction = 'outbound' AND m.created_at < :before "
    "AND m.id > :after AND l.page_id IS NULL ORDER BY m.id LIMIT :limit"
)
_ORPHANS = {
    healthy_only: text(
        _ORPHANS_SQL.format(
            pages="JOIN pages p ON p.page_id = m.page_id AND p.healthy " if healthy_only else ""
        )
    ).columns(body=_MC.body.type)
    for healthy_only in (False, True)
}
#: A conversation whose lease another instance holds is tried again after this many seconds.
CONTENDED_RETRY = 0.25


def _now() -> datetime:
    return datetime.now(UTC)


class Sender:
    """Sends the outbox. Create it inside the running event loop's lifetime, `await start()`,
    call `notify` after each committed turn, `await stop()` at shutdown."""

    def __init__(
        self,
        engine: Engine,
        graph: GraphClient,
        pages: PageRegistry,
        *,
        limiter: PageRateLimiter | None = None,
        retry: RetryPolicy | None = None,
        on_result: SendHook | None = None,
        max_in_flight: int = DEFAULT_MAX_CONNECTIONS,
        max_in_flight_per_page: int | None = None,
        page_check_interval: float = 5.0,
        rng: random.Random | None = None,
        shared: bool | None = None,
        lease_seconds: float = 30.0,
        owner: str | None = None,
    ) -> None:
        self.engine = engine
        self._record_sql = _record_sql(engine)
        self._time_param = bind_processor(engine, _M, "sent_at")
        self.graph = graph
        self.pages = pages
        self.limiter = limiter or PageRateLimiter()
        self.retry = retry or RetryPolicy()
        self.on_result = on_result
        self.max_in_flight = max_in_flight
        self.max_in_flight_per_page = max_in_flight_per_page or max(1, max_in_flight // 2)
        self.page_check_interval = page_check_interval
        self._rng = rng or random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._page_slots: dict[str, asyncio.Semaphore] = {}
        self._credentials: dict[str, PageCredentials] = {}
        self._conversations: dict[Key, _Conversation] = {}
        # (page_id, psid) -> highest row id already handled, for conversations that went idle
        # while a load was running: that load may still see their rows as pending.
        self._idle_marks: dict[Key, int] = {}
        # Conversations waiting for their page to get a (new) token.
        self._held: dict[str, set[Key]] = {}
        #: Tokens Meta refused, by page: a re-read of the pages table that races with the
        #: write of that refusal must not make the page healthy again.
        self._refused: dict[str, str] = {}
        self._notified: set[Key] = set()
        self._resume = False
        self._loading = False
        self._wake_loader = asyncio.Event()
        self._batch: _Batch | None = None
        self._writing = False
        self._wake_writer = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._db_calls: set[asyncio.Future[Any]] = set()
        self._warned_unknown: set[str] = set()
        #: Several instances may share the database (default: on PostgreSQL): use leases.
        self.shared = engine.dialect.name == "postgresql" if shared is None else shared
        self.lease_seconds = lease_seconds
        self.owner = owner or uuid.uuid4().hex[:16]
        # Conversations we hold the lease of -> until when (monotonic) we may trust it.
        self._leased: dict[Key, float] = {}
        self._lease_lock = asyncio.Lock()  # acquire, renew and release never interleave
        self._contended: set[Key] = set()
        self._loading_keys: set[Key] = set()  # leased, rows being loaded
        self._lease_wake = asyncio.Event()  # a conversation went idle: give its lease back
        self._sweep = False

    # ------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Read the pages, start the loader, writer and page monitor, and resume every
        pending row. Raises `CryptoError` when the stored tokens cannot be decrypted."""
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self.max_in_flight)
        self._credentials = await self._db(self.pages.credentials)
        self._resume = True
        self._wake_loader.set()
        self._tasks = [
            asyncio.create_task(self._loader(), name="sender-loader"),
            asyncio.create_task(self._writer(), name="sender-writer"),
            asyncio.create_task(self._monitor(), name="sender-pages"),
        ]
        if self.shared:
            self._tasks.append(asyncio.create_task(self._keep_leases(), name="sender-leases"))

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop sending. Rows being sent stay pending (they are sent again at the next
        start); outcomes already known are written first."""
        loader, writer, monitor, *extra = self._tasks or (None, None, None)
        workers = [c.task for c in self._conversations.values() if c.task is not None]
        for task in (loader, monitor, *extra, *workers):
            if task is not None:
                task.cancel()
        tasks = {t for t in (loader, monitor, *extra, *workers) if t}
        if tasks:
            # Bounded: a task that swallowed its cancellation must not hang the shutdown.
            done, _ = await asyncio.wait(tasks, timeout=timeout)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved, so asyncio does not report it at exit
        if writer is not None:
            # Let the writer drain what is queued, then end it.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drain_writes(), timeout)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        if self._db_calls:
            await asyncio.wait(set(self._db_calls), timeout=timeout)
        if self.shared and self._leased:
            # Hand our conversations to the other instances now rather than at expiry.
            self._leased.clear()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._db(self._release_all), timeout)
        self._tasks = []

    async def _db(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking database work in a worker thread. `stop()` waits for it: a thread
        cut loose would return its connection to a pool that is being disposed."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, functools.partial(function, *args, **kwargs))
        self._db_calls.add(future)
        future.add_done_callback(self._settled)
        return await asyncio.shield(future)

    def _settled(self, future: asyncio.Future[Any]) -> None:
        self._db_calls.discard(future)
        if not future.cancelled():
            future.exception()  # retrieved: whoever awaited it may have been cancelled

    async def _drain_writes(self) -> None:
        while self._batch is not None or self._writing:
            await asyncio.sleep(0.005)

    def notify(self, page_id: str, psid: str) -> None:
        """New pending rows were committed for this conversation: send them. Call it on the
        event loop (from a thread, use `notify_threadsafe`)."""
        self._notified.add((page_id, psid))
        self._wake_loader.set()

    def notify_threadsafe(self, page_id: str, psid: str) -> None:
        """`notify` from another thread."""
        if self._loop is None:
            raise RuntimeError("the sender is not started")
        self._loop.call_soon_threadsafe(self.notify, page_id, psid)

    def forget(self, page_id: str, psid: str) -> None:
        """Drop the loaded, unsent rows of a person whose data was erased (the row being
        sent, if any, still goes out)."""
        key = (page_id, psid)
        self._notified.discard(key)
        self._contended.discard(key)
        for keys in self._held.values():
            keys.discard(key)
        conversation = self._conversations.get(key)
        if conversation is not None:
            while len(conversation.rows) > 1:  # rows[0] may be mid-send; `_run` pops it
                conversation.rows.pop()

    def queue_depth(self) -> int:
        """Rows waiting in memory to be sent (not counting held pages' rows)."""
        return sum(len(c.rows) for c in self._conversations.values())

    def held_pages(self) -> list[str]:
        """Pages whose messages wait for a new token."""
        return sorted(page for page, keys in self._held.items() if keys)

    def is_idle(self) -> bool:
        """Nothing to load, send or write (held pages' rows aside), and no lease of an idle
        conversation left to give back."""
        return not (
            self._notified
            or self._contended
            or (self._leased.keys() - self._conversations.keys() - self._loading_keys)
            or self._resume
            or self._loading
            or self._conversations
            or self._batch is not None
            or self._writing
        )

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until `is_idle` (for tests and orderly shutdowns); TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while not self.is_idle():
            if time.monotonic() > deadline:
                raise TimeoutError("the sender is still busy")
            await asyncio.sleep(0.005)

    # ------------------------------------------------------------------------- loading

    async def _loader(self) -> None:
        while True:
            await self._wake_loader.wait()
            self._wake_loader.clear()
            resume, self._resume = self._resume, False
            keys, self._notified = self._notified, set()
            if not (resume or keys):
                continue
            # Every status write committed before this point is visible to the query below;
            # conversations that go idle while it runs record their marks anew.
            self._idle_marks.clear()
            self._loading = True
            sweep, self._sweep = self._sweep, False
            try:
                if self.shared:
                    rows = await self._load_leased(keys, resume, sweep)
                elif resume:
                    rows = await self._db(self._load_all)
                else:
                    rows = await self._db(self._load, keys)
            except Exception as e:  # the loader must outlive any one failure
                log.error("sender: cannot read the outbox (%r); trying again in 1 s", e)
                self._resume |= resume
                self._notified |= keys
                self._loading = False
                await asyncio.sleep(1.0)
                self._wake_loader.set()
                continue
            self._loading = False
            self._enqueue(rows)

    def _load(self, keys: Iterable[Key]) -> list[Any]:
        by_page: dict[str, list[str]] = {}
        for page_id, psid in keys:
            by_page.setdefault(page_id, []).append(psid)
        rows: list[Any] = []
        with self.engine.connect() as conn:
            for page_id, psids in by_page.items():
                for i in range(0, len(psids), _LOAD_CHUNK):
                    chunk = psids[i : i + _LOAD_CHUNK]
                    rows.extend(conn.execute(_LOAD_FOR, {"page_id": page_id, "psids": chunk}))
        return rows

    def _load_all(self) -> list[Any]:
        rows: list[Any] = []
        after = 0
        with self.engine.connect() as conn:
            while True:
                found = conn.execute(_RESUME, {"after": after}).all()
                rows.extend(found)
                if len(found) < _RESUME_PAGE:
                    return rows
                after = found[-1].id

    # ------------------------------------------------------------------------- leases

    async def _load_leased(self, keys: set[Key], resume: bool, sweep: bool) -> list[Any]:
        """Shared mode: the pending rows of the conversations we hold (or now take) the
        lease of. At start (`resume`) and on sweeps, the rows nobody holds."""
        rows: list[Any] = []
        try:
            if resume or sweep:
                # At start, every row nobody holds (`stop` gave our old leases back; after
                # a crash they expire). Sweeps skip fresh rows: their instance is about to
                # be notified of them.
                grace = 0.0 if resume else self.lease_seconds
                found = await self._db(self._load_orphans, grace)
                granted = await self._acquire({(r.page_id, r.psid) for r in found})
                rows = [r for r in found if (r.page_id, r.psid) in granted]
            if keys:
                granted = await self._acquire(keys)
                denied = keys - granted
                if denied:
                    self._contended |= denied
                    assert self._loop is not None
                    self._loop.call_later(CONTENDED_RETRY, self._retry_contended)
                if granted:
                    rows += await self._db(self._load, granted)
        finally:
            # Leases taken for nothing (the rows were sent meanwhile) go back at once; the
            # others once their conversations are idle (rows are queued before any await).
            self._loading_keys = set()
            self._lease_wake.set()
        return rows

    def _retry_contended(self) -> None:
        keys, self._contended = self._contended, set()
        for page_id, psid in keys:
            self.notify(page_id, psid)

    async def _acquire(self, keys: set[Key]) -> set[Key]:
        """Take (or renew) the leases of `keys`; returns the ones we now hold (kept until
        the loader has queued their rows)."""
        if not keys:
            return set()
        async with self._lease_lock:
            until = self._trust_until()
            granted = await self._db(self._acquire_rows, sorted(keys))
            for key in granted:
                self._leased[key] = until
            self._loading_keys |= granted
            return granted

    def _acquire_rows(self, keys: list[Key]) -> set[Key]:
        params = {"owner": self.owner, "ttl": self.lease_seconds, **_keys(keys)}
        with self.engine.begin() as conn:
            return {(r.page_id, r.psid) for r in conn.execute(_ACQUIRE, params)}

    def _load_orphans(self, grace: float) -> list[Any]:
        before = _now() - timedelta(seconds=grace)
        query = _ORPHANS[grace > 0]
        rows: list[Any] = []
        after = 0
        with self.engine.connect() as conn:
            while True:
                params = {"before": before, "after": after, "limit": _RESUME_PAGE}
                found = conn.execute(query, params).all()
                rows.extend(found)
                if len(found) < _RESUME_PAGE:
                    return rows
                after = found[-1].id

    def _trust_until(self) -> float:
        """Until when a lease taken or renewed from now on may be used to start a send: half
        its term, counted from BEFORE the statement (the database's expiry is counted from
        when it ran, which a loaded process learns late). The other half is the margin for a
        send started just before: the Send API has no idempotency key, so a send still in
        flight when another instance takes over is sent twice."""
        return time.monotonic() + self.lease_seconds * 0.5

    def _lease_valid(self, key: Key) -> bool:
        return not self.shared or self._leased.get(key, 0.0) > time.monotonic()

    async def _keep_leases(self) -> None:
        """Renew our leases, give back the idle ones, and sweep for orphaned rows."""
        period = max(0.1, self.lease_seconds / 4)  # renewed twice within the trusted half
        last_sweep = last_renewal = time.monotonic()
        while True:
            # Not `wait_for`: on Python 3.11 it can swallow a cancellation that arrives as the
            # event is set (stop() cancels the conversations, which set it), and stop() would
            # then wait for this task forever.
            waiter = asyncio.ensure_future(self._lease_wake.wait())
            try:
                await asyncio.wait({waiter}, timeout=period)
            finally:
                waiter.cancel()
            self._lease_wake.clear()
            await asyncio.sleep(0.02)  # let a burst of idle conversations gather
            try:
                async with self._lease_lock:
                    await self._release_idle()
                    if self._leased and time.monotonic() - last_renewal >= period:
                        last_renewal = time.monotonic()
                        await self._renew()
            except Exception as e:  # the database is down: leases run out, sending pauses
                log.error("sender: cannot renew the outbox leases (%r)", e)
            if time.monotonic() - last_sweep >= self.lease_seconds / 2:
                last_sweep = time.monotonic()
                self._sweep = True
                self._wake_loader.set()

    async def _renew(self) -> None:
        keys = sorted(self._leased)
        until = self._trust_until()
        held = await self._db(self._renew_rows, keys)
        for key in keys:
            if key in held:
                if key in self._leased:
                    self._leased[key] = until
            elif self._leased.pop(key, None) is not None:
                # Taken over (we were stalled past the expiry): `_run` stops sending it.
                log.warning("sender: lost the lease of %s/%s", *key)

    async def _release_idle(self) -> None:
        """Give back the leases of conversations with nothing left to send here."""
        busy = self._conversations.keys() | self._loading_keys
        keys = sorted(k for k in self._leased if k not in busy)
        if not keys:
            return
        for key in keys:
            del self._leased[key]
        await self._db(self._release_rows, keys)

    def _renew_rows(self, keys: list[Key]) -> set[Key]:
        params = {"owner": self.owner, "ttl": self.lease_seconds, **_keys(keys)}
        with self.engine.begin() as conn:
            return {(r.page_id, r.psid) for r in conn.execute(_RENEW, params)}

    def _release_rows(self, keys: list[Key]) -> None:
        params = {"owner": self.owner, **_keys(keys)}
        with self.engine.begin() as conn:
            conn.execute(_RELEASE, params)

    def _release_all(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(_RELEASE_ALL, {"owner": self.owner})

    def _enqueue(self, rows: Iterable[Any]) -> None:
        for row in sorted(rows, key=lambda r: r.id):
            key = (row.page_id, row.psid)
            conversation = self._conversations.get(key)
            if conversation is None:
                if row.id <= self._idle_marks.get(key, 0):
                    continue  # handled; the load raced with its status write
                conversation = self._conversations[key] = _Conversation(key)
                conversation.done_id = row.id - 1
            elif row.id <= conversation.last_id:
                continue  # already queued or handled
            body = row.body if isinstance(row.body, dict) else {}
            conversation.rows.append(_Row(row.id, row.kind, body))
            conversation.last_id = row.id
            if conversation.task is None:
                conversation.task = asyncio.create_task(
                    self._run(conversation), name=f"sender-{key[0]}-{key[1]}"
                )

    # ------------------------------------------------------------------------- sending

    async def _run(self, conversation: _Conversation) -> None:
        key = conversation.key
        held = lost = False
        try:
            while True:
                while conversation.rows:
                    row = conversation.rows[0]
                    if not self._lease_valid(key):
                        lost = True  # another instance may send these rows now
                        break
                    try:
                        await self._deliver(key, row)
                    except _Hold:
                        held = True
                        break
                    conversation.rows.popleft()
                    conversation.done_id = row.id
                    conversation.flushed = self._batch_future()
                if conversation.flushed is not None:
                    # Our outcomes must be committed before a later load can look at our rows.
                    await asyncio.shield(conversation.flushed)
                if held or lost or not conversation.rows:
                    break
        finally:
            if held:
                self._held.setdefault(key[0], set()).add(key)
            self._conversations.pop(key, None)
            self._idle_marks[key] = conversation.done_id
            if self.shared:
                self._lease_wake.set()
                if lost:
                    # Ask again: if nobody took the lease over, we carry on.
                    self._contended.add(key)
                    assert self._loop is not None
                    self._loop.call_later(CONTENDED_RETRY, self._retry_contended)

    async def _deliver(self, key: Key, row: _Row) -> None:
        """Send one row until it is sent or failed; raises `_Hold` to keep it pending."""
        page_id, psid = key
        if row.kind == "pause":
            await asyncio.sleep(_seconds(row.body))
            self._record(row, "sent", at=_now())
            self._report(key, row, "sent")
            return
        try:
            call = self._call_for(psid, row)
        except (KeyError, TypeError, ValueError) as e:
            self._fail(key, row, None, f"malformed outbound row: {e!r}")
            return
        slots = self._page_slots.get(page_id)
        if slots is None:
            slots = self._page_slots[page_id] = asyncio.Semaphore(self.max_in_flight_per_page)
        assert self._slots is not None
        while True:
            credentials = self._usable(page_id)
            await self.limiter.acquire(page_id)
            credentials = self._usable(page_id)  # the token may have been refused meanwhile
            async with slots, self._slots:
                at = _now()
                started = time.perf_counter()
                try:
                    answer = await call(credentials.token)
                    error = None
                except GraphError as e:
                    error = e
                except Exception as e:
                    # Something below the Graph client that it did not translate: most
                    # likely the connection, so retry (a bounded number of times).
                    log.exception("sender: page %s user %s row %d: unexpected", *key, row.id)
                    error = GraphError(f"unexpected {type(e).__name__}: {e}", kind="transient")
                seconds = time.perf_counter() - started
            if error is None:
                mid = answer.get("message_id")
                self._record(row, "sent", mid=mid if isinstance(mid, str) else None, at=at)
                self._report(key, row, "sent", seconds=seconds)
                return
            if error.kind in ("transient", "rate_limit"):
                row.attempts += 1
                if row.attempts < self.retry.max_attempts:
                    delay = self.retry.delay(row.attempts, self._rng, error.retry_after)
                    if error.kind == "rate_limit":
                        self.limiter.pause(page_id, delay)
                    log.warning(
                        "sender: page %s user %s row %d: %s; retry %d in %.2f s",
                        page_id,
                        psid,
                        row.id,
                        error,
                        row.attempts,
                        delay,
                    )
                    self._report(key, row, "retry", error, seconds)
                    await asyncio.sleep(delay)
                    continue
                self._fail(key, row, error, f"gave up after {row.attempts} attempts: {error}")
                return
            if error.kind == "bad_token":
                await self._refuse_token(credentials, error)
                self._report(key, row, "held", error, seconds)
                raise _Hold
            self._fail(key, row, error, None, seconds)
            return

    def _call_for(self, psid: str, row: _Row) -> Callable[[str], Any]:
        """The Graph API call for a row, as a function of the page token."""
        payload = row.body.get("payload")
        payload = payload if isinstance(payload, dict) else {}
        graph = self.graph
        if row.kind == "message":
            if not payload:
                raise ValueError("a message row without a payload")
            body = message_body(psid, payload, tag=row.body.get("tag") or None)
            return lambda token: graph.send(token, body)
        if row.kind == "sender_action":
            body = sender_action_body(psid, str(payload["sender_action"]))
            return lambda token: graph.send(token, body)
        if row.kind == "pass_thread":
            target, metadata = payload["target_app_id"], payload.get("metadata")
            return lambda token: graph.pass_thread_control(token, psid, target, metadata)
        if row.kind == "take_thread":
            metadata = payload.get("metadata")
            return lambda token: graph.take_thread_control(token, psid, metadata)
        raise ValueError(f"unknown outbound kind {row.kind!r}")

    def _usable(self, page_id: str) -> PageCredentials:
        credentials = self._credentials.get(page_id)
        if credentials is None:
            if page_id not in self._warned_unknown:
                self._warned_unknown.add(page_id)
                log.error(
                    "sender: page %s is not configured; its messages wait until it is added "
                    "with `flowc page add --page-id %s --token …`",
                    page_id,
                    page_id,
                )
            raise _Hold
        if not credentials.healthy:
            raise _Hold
        return credentials

    async def _refuse_token(self, credentials: PageCredentials, error: GraphError) -> None:
        page_id = credentials.page_id
        self._refused[page_id] = credentials.ciphertext
        current = self._credentials.get(page_id)
        if current is not None and current.ciphertext == credentials.ciphertext:
            self._credentials[page_id] = replace(current, healthy=False)
        if current is None or current.healthy:
            log.error(
                "sender: page %s: Meta refused its token (%s); its messages wait for a new "
                "token: `flowc page add --page-id %s --token …`",
                page_id,
                error,
                page_id,
            )
        try:
            await self._db(
                self.pages.mark_unhealthy,
                page_id,
                str(error),
                ciphertext=credentials.ciphertext,
            )
        except Exception as e:  # the page is held in memory all the same
            log.error("sender: cannot record page %s as unhealthy: %s", page_id, e)

    def _fail(
        self,
        key: Key,
        row: _Row,
        error: GraphError | None,
        message: str | None,
        seconds: float = 0.0,
    ) -> None:
        text_ = message or (error.message if error is not None else "failed")
        log.warning(
            "sender: page %s user %s row %d failed: %s",
            key[0],
            key[1],
            row.id,
            error if message is None else text_,
        )
        self._record(
            row,
            "failed",
            error_code=error.code if error else None,
            error_subcode=error.subcode if error else None,
            error_message=text_,
        )
        self._report(key, row, "failed", error, seconds)

    def _report(
        self,
        key: Key,
        row: _Row,
        outcome: Outcome,
        error: GraphError | None = None,
        seconds: float = 0.0,
    ) -> None:
        if self.on_result is None:
            return
        result = SendResult(
            key[0],
            key[1],
            row.id,
            row.kind,
            outcome,
            error.kind if error else None,
            error.code_text if error else None,
            seconds,
        )
        try:
            self.on_result(result)
        except Exception:  # metrics must never stop a send
            log.exception("sender: the on_result hook failed")

    # ------------------------------------------------------------------------- pages

    async def _monitor(self) -> None:
        """Re-read the pages now and then: replaced tokens, added or removed pages."""
        while True:
            await asyncio.sleep(self.page_check_interval)
            await self.refresh_pages()

    async def refresh_pages(self) -> None:
        """Re-read the pages and resume the conversations of pages that can send again."""
        try:
            fresh = await self._db(self.pages.credentials)
        except Exception as e:  # keep the last known pages; try again at the next check
            log.error("sender: cannot read the pages: %s", e)
            return
        for page_id, refused in list(self._refused.items()):
            found = fresh.get(page_id)
            if found is None or found.ciphertext != refused:
                del self._refused[page_id]  # a new token (or none): judge it afresh
            elif found.healthy:
                fresh[page_id] = replace(found, healthy=False)
        self._credentials = fresh
        for page_id in list(self._held):
            credentials = self._credentials.get(page_id)
            if credentials is not None and credentials.healthy:
                keys = self._held.pop(page_id)
                self._warned_unknown.discard(page_id)
                log.info("sender: page %s can send again; resuming %d users", page_id, len(keys))
                for page, psid in keys:
                    self.notify(page, psid)

    # ------------------------------------------------------------------------- writing

    def _record(
        self,
        row: _Row,
        status: str,
        *,
        mid: str | None = None,
        at: datetime | None = None,
        error_code: int | None = None,
        error_subcode: int | None = None,
        error_message: str | None = None,
    ) -> None:
        if self._batch is None:
            assert self._loop is not None
            self._batch = _Batch([], self._loop.create_future())
            self._wake_writer.set()
        self._batch.rows.append((status, mid, at, error_code, error_subcode, error_message, row.id))

    def _batch_future(self) -> asyncio.Future[None] | None:
        return self._batch.done if self._batch is not None else None

    async def _writer(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            batch, self._batch = self._batch, None
            if batch is None:
                continue
            self._writing = True
            delay = 0.1
            while True:
                try:
                    await self._db(self._write, batch.rows)
                    break
                except Exception as e:  # the writer must outlive any one failure
                    log.error("sender: cannot record %d send results (%r)", len(batch.rows), e)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            self._writing = False
            batch.done.set_result(None)

    def _write(self, rows: list[_Outcome]) -> None:
        params = [self._params(values) for values in rows]
        try:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(self._record_sql, params)
        except exc.IntegrityError:
            # A message id already in the log (e.g. its echo was logged first): keep the
            # row's outcome and lose only the id, row by row.
            for values in params:
                try:
                    with self.engine.begin() as conn:
                        conn.exec_driver_sql(self._record_sql, values)
                except exc.IntegrityError:
                    log.warning("sender: message id of row %d is logged already", values[-1])
                    with self.engine.begin() as conn:
                        conn.exec_driver_sql(self._record_sql, (values[0], None, *values[2:]))

    def _params(self, values: _Outcome) -> tuple[Any, ...]:
        status, mid, at, code, subcode, message, row_id = values
        return (status, mid, self._time_param(at), code, subcode, message, row_id)


def _keys(keys: list[Key]) -> dict[str, list[str]]:
    """Conversation keys as the two arrays the lease statements unnest."""
    return {"pages": [k[0] for k in keys], "psids": [k[1] for k in keys]}


def _seconds(body: dict[str, Any]) -> float:
    try:
        return max(0.0, float(body.get("seconds") or 0.0))
    except (TypeError, ValueError):
        return 0.0
