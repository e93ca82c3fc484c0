"""The durable inbox: webhook events stored (de-duplicated) before the 200, then processed.

`Inbox` is the `webhook_events` table: add events with their dedupe keys (ON CONFLICT DO
NOTHING), load the pending ones, record outcomes. Events that need no processing (echoes,
unknown kinds, … see `server.processor.RECORD_ONLY`) can be stored with their final status
right away (`settle`). `IngressWriter` puts the webhook in front of it: requests hand their
events to one writer thread, which commits everything that arrived meanwhile in one
transaction (group commit) and wakes each request when its events are on disk.

SQLite allows one writer at a time and makes the others sleep-poll on its busy handler (1 ms,
then 2, 5, 10 … ms), which wrecks throughput under concurrency. Writers of this process
therefore take `write_lock(engine)` first: they queue on a Python lock (instant hand-over)
instead. On PostgreSQL the lock is a no-op."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Connection, Engine, bindparam, func, select, update

from runtime import tables
from server.messenger import EventKind, WebhookEvent, classify
from server.rawsql import RowInserter, bind_processor, mark

log = logging.getLogger(__name__)

EventStatus = Literal["pending", "done", "failed", "ignored", "unknown_page"]

_T = tables.webhook_events
_C = _T.c

#: The most events one group-commit transaction takes (more wait for the next one).
MAX_BATCH_EVENTS = 2000


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A webhook event as stored in the inbox, with its id (the processing order)."""

    id: int
    page_id: str
    psid: str | None
    kind: EventKind
    key: str
    payload: dict[str, Any]
    received_at: datetime
    attempts: int = 0
    #: "pending" unless the ingress could settle it at once (an echo, an unknown kind …).
    status: EventStatus = "pending"

    @property
    def inner_kind(self) -> EventKind:
        """The kind of the item itself (differs from `kind` only for standby events)."""
        return classify(self.payload) if self.kind == "standby" else self.kind

    @property
    def conversation(self) -> tuple[str, str | None]:
        """The (page, user) whose events are processed one after another."""
        return (self.page_id, self.psid)


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _stored(row: Any) -> StoredEvent:
    return StoredEvent(
        row.id,
        row.page_id,
        row.psid,
        row.kind,
        row.event_key,
        row.payload,
        _utc(row.received_at),
        row.attempts,
    )


_SQLITE_LOCKS: dict[str, threading.Lock] = {}
_SQLITE_LOCKS_GUARD = threading.Lock()


def write_lock(engine: Engine) -> AbstractContextManager[Any]:
    """The lock this process's writers take before writing to `engine`'s database: one per
    SQLite file (see the module docstring); nothing for PostgreSQL."""
    if engine.dialect.name != "sqlite":
        return nullcontext()
    key = str(engine.url.database)
    with _SQLITE_LOCKS_GUARD:
        lock = _SQLITE_LOCKS.get(key)
        if lock is None:
            lock = _SQLITE_LOCKS[key] = threading.Lock()
    return lock


#: Rows per INSERT statement (SQLite allows 32,766 parameters; 9 per row).
_ROWS_PER_INSERT = 500
#: The hot path of ingress: one multi-row INSERT … ON CONFLICT DO NOTHING RETURNING for a
#: whole group commit, with no SQL compiled per call (a third of the cost of executing rows
#: one by one).
_COLUMNS = (
    "page_id",
    "psid",
    "event_key",
    "kind",
    "payload",
    "received_at",
    "status",
    "processed_at",
    "attempts",
)
#: Decides at ingress the final status of an event that needs no processing (None: pending).
Settle = Callable[[WebhookEvent], "EventStatus | None"]


_STORED = (_C.id, _C.page_id, _C.psid, _C.kind, _C.event_key, _C.payload, _C.received_at)
_PENDING = (
    select(*_STORED, _C.attempts)
    .where(_C.status == "pending", _C.id > bindparam("after"))
    .order_by(_C.id)
    .limit(bindparam("limit"))
)
_ATTEMPT = (
    update(_T)
    .where(_C.id == bindparam("event_id"), _C.status == "pending")
    .values(attempts=bindparam("new_attempts"), error=bindparam("new_error", type_=_C.error.type))
)
_STALE = (
    select(*_STORED, _C.attempts)
    .where(_C.status == "pending", _C.received_at < bindparam("before", type_=_C.received_at.type))
    .order_by(_C.id)
    .limit(bindparam("limit"))
)
_COUNTS = select(_C.status, func.count()).group_by(_C.status)
_STATUS = select(_C.status, _C.attempts, _C.error).where(_C.id == bindparam("event_id"))


class Inbox:
    """The `webhook_events` table. Synchronous: call it from worker threads in async code."""

    def __init__(self, engine: Engine, *, settle: Settle | None = None) -> None:
        dialect = engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"Flowlang supports SQLite and PostgreSQL, not {dialect}")
        self.engine = engine
        self.settle = settle
        self.lock = write_lock(engine)
        # SQLite's timestamp text, as SQLAlchemy writes it (for the driver-level UPDATE).
        self._time = bind_processor(engine, _T, "received_at")
        self._rows = RowInserter(
            engine,
            _T,
            _COLUMNS,
            suffix="ON CONFLICT (event_key) DO NOTHING",
            returning=("id", "event_key"),
            rows_per_statement=_ROWS_PER_INSERT,
        )
        # Claims a pending event for an outcome (the hot path of every processed event); no
        # row changes when it was handled already.
        self._finish_sql = (
            "UPDATE webhook_events SET status = {0}, attempts = attempts + 1, "
            "processed_at = {0}, error = {0} WHERE id = {0} AND status = 'pending'"
        ).format(mark(engine))

    def add(self, events: Sequence[WebhookEvent]) -> list[StoredEvent]:
        """Store events in one transaction; returns the ones that were new (a redelivered
        event, known by its key, is skipped), in order."""
        return self.add_batches([events])[0]

    def add_batches(self, batches: Sequence[Sequence[WebhookEvent]]) -> list[list[StoredEvent]]:
        """Store several requests' events in ONE transaction (group commit); returns the new
        events of each batch. Either all are stored or, on an error, none."""
        now = _now()
        events = [event for batch in batches for event in batch]
        with self.lock, self.engine.begin() as conn:
            new = self._insert(conn, events, now)
        results: list[list[StoredEvent]] = []
        for batch in batches:
            results.append([s for e in batch if (s := new.pop(e.key, None)) is not None])
        return results

    def _insert(
        self, conn: Connection, events: list[WebhookEvent], now: datetime
    ) -> dict[str, StoredEvent]:
        """Insert the rows; returns the new events by key (the first copy of a key wins)."""
        statuses: list[EventStatus] = []
        rows = []
        for event in events:
            status = (self.settle(event) if self.settle else None) or "pending"
            statuses.append(status)
            rows.append(
                (
                    event.page_id,
                    event.psid,
                    event.key,
                    event.kind,
                    event.payload,
                    now,
                    status,
                    None if status == "pending" else now,  # processed_at
                    0,  # attempts
                )
            )
        ids = {key: event_id for event_id, key in self._rows.insert(conn, rows)}
        new: dict[str, StoredEvent] = {}
        for event, status in zip(events, statuses, strict=True):
            event_id = ids.pop(event.key, None)
            if event_id is not None:
                new[event.key] = StoredEvent(
                    event_id,
                    event.page_id,
                    event.psid,
                    event.kind,
                    event.key,
                    event.payload,
                    now,
                    0,
                    status,
                )
        return new

    def pending(self, *, after: int = 0, limit: int = 10_000) -> list[StoredEvent]:
        """Pending events with an id above `after`, oldest first (at most `limit`)."""
        with self.engine.connect() as conn:
            rows = conn.execute(_PENDING, {"after": after, "limit": limit}).all()
        return [_stored(r) for r in rows]

    def stale(self, before: datetime, *, limit: int = 10_000) -> list[StoredEvent]:
        """Pending events received before `before`, oldest first: with several instances on
        one database, the ones whose instance may have died (any instance takes them over)."""
        with self.engine.connect() as conn:
            rows = conn.execute(_STALE, {"before": before, "limit": limit}).all()
        return [_stored(r) for r in rows]

    def all_pending(self, batch: int = 10_000) -> Iterable[StoredEvent]:
        """Every pending event, oldest first, read in batches."""
        after = 0
        while True:
            found = self.pending(after=after, limit=batch)
            yield from found
            if len(found) < batch:
                return
            after = found[-1].id

    def finish(
        self,
        event_id: int,
        status: EventStatus,
        *,
        error: str | None = None,
        conn: Connection | None = None,
    ) -> bool:
        """Record the outcome of a pending event (inside `conn`'s transaction when given).
        False when it was not pending any more (handled already)."""
        params = (status, self._time(_now()), error, event_id)
        if conn is not None:
            return conn.exec_driver_sql(self._finish_sql, params).rowcount == 1
        with self.lock, self.engine.begin() as own:
            return own.exec_driver_sql(self._finish_sql, params).rowcount == 1

    def record_attempt(self, event_id: int, attempts: int, error: str) -> None:
        """Count a failed processing attempt of a pending event and keep the error."""
        params = {"event_id": event_id, "new_attempts": attempts, "new_error": error}
        with self.lock, self.engine.begin() as conn:
            conn.execute(_ATTEMPT, params)

    def status(self, event_id: int) -> tuple[EventStatus, int, str | None] | None:
        """(status, attempts, error) of an event, or None when there is no such event."""
        with self.engine.connect() as conn:
            row = conn.execute(_STATUS, {"event_id": event_id}).first()
        return None if row is None else (row[0], row[1], row[2])

    def counts(self) -> dict[str, int]:
        """How many events have each status."""
        with self.engine.connect() as conn:
            return {status: n for status, n in conn.execute(_COUNTS)}


# ----------------------------------------------------------------------------- group commit

_Waiter = tuple[Sequence[WebhookEvent], "asyncio.Future[list[StoredEvent]]"]


class IngressWriter:
    """Stores webhook events for the request handlers, from one thread, with group commit.

    `await writer.add(events)` returns once the events are committed (or raises the database
    error). Requests that arrive while a transaction commits go together into the next one,
    so under load each commit carries many requests. `on_stored` is called in the event loop
    with the new pending events of every commit, in id order, even when the request that
    brought them has gone away meanwhile (so nothing stored waits for a restart)."""

    def __init__(
        self, inbox: Inbox, on_stored: Callable[[list[StoredEvent]], None] | None = None
    ) -> None:
        self.inbox = inbox
        self.on_stored = on_stored
        self._queue: queue.SimpleQueue[_Waiter | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start the writer thread (call from the event loop that will await `add`)."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="flow-ingress", daemon=True)
        self._thread.start()

    async def add(self, events: Sequence[WebhookEvent]) -> list[StoredEvent]:
        """Store `events` durably; returns the new ones (redeliveries are left out)."""
        if self._thread is None or self._loop is None:
            raise RuntimeError("the ingress writer is not running")
        future: asyncio.Future[list[StoredEvent]] = self._loop.create_future()
        self._queue.put((events, future))
        return await future

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what was handed in, then stop the thread."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            waiters = [first]
            size = len(first[0])
            while size < MAX_BATCH_EVENTS:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                waiters.append(more)
                size += len(more[0])
            self._commit(waiters)

    def _commit(self, waiters: list[_Waiter]) -> None:
        outcomes: list[list[StoredEvent] | BaseException]
        try:
            outcomes = list(self.inbox.add_batches([events for events, _ in waiters]))
        except Exception as e:
            if len(waiters) == 1:
                outcomes = [e]
            else:
                # One bad request must not fail the others: give each its own transaction.
                outcomes = []
                for events, _ in waiters:
                    try:
                        outcomes.append(self.inbox.add(events))
                    except Exception as single:
                        outcomes.append(single)
        assert self._loop is not None
        futures = [future for _, future in waiters]
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self._loop.call_soon_threadsafe(self._resolve, futures, outcomes)

    def _resolve(
        self,
        futures: list[asyncio.Future[list[StoredEvent]]],
        outcomes: list[list[StoredEvent] | BaseException],
    ) -> None:
        stored: list[StoredEvent] = []
        for future, outcome in zip(futures, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not future.done():
                    future.set_exception(outcome)
                continue
            stored.extend(e for e in outcome if e.status == "pending")
            if not future.done():  # done = the request was cancelled (client gone)
                future.set_result(outcome)
        if stored and self.on_stored is not None:
            # The requests were woken first (set_result above), so their 200s are written
            # before any worker runs; the dispatcher only queues the events here.
            self.on_stored(stored)
