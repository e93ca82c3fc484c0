"""Processing one stored webhook event: the flow step and everything it changes, atomically.

A user event (message, postback, referral) is ONE database transaction: claim the event,
log the inbound message, load the conversation, run the engine (`advance`), save the state
with its version check, add the replies to the message log as 'pending' (the durable outbox)
and mark the event done. A crash anywhere redoes the whole event or nothing. Then the sender
is told the conversation has messages to send. A user's profile (`user.*`) is fetched from
the User Profile API before their first event (or, with `profiles_when_read`, before the
first turn that reads it) and kept in `contacts`.

The transactions of many events (of different conversations: the dispatcher never runs two
of one conversation at once) share one commit: `GroupCommit` runs them back to back on a
writer thread and commits them together, which on SQLite halves the cost of an event. If one
of them fails, each is run again in a transaction of its own, so one bad event never takes
the others down.

Other kinds: echoes are recorded (the inbox row) and never reach a flow; deliveries and reads
mark sent messages up to their watermark; hand-over events switch the bot off or on; standby
events (another app owns the thread) are recorded only, apart from their receipts. Events for
pages that are not configured are stored with status 'unknown_page' and not processed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from flowlang.ir import PAGE_INBOX_APP_ID
from runtime import tables
from runtime.engine import RuntimeFault, Turn, advance, take_back
from runtime.events import Inbound, Outbound
from runtime.program import ProgramView
from runtime.state import ConversationState
from runtime.store import Contact, SqlStore, insert_statement, load_state, save_state
from server.dispatcher import Deferred
from server.inbox import EventStatus, Inbox, StoredEvent, write_lock
from server.messenger import EventKind, WebhookEvent, to_inbound
from server.metrics import Metrics
from server.rawsql import RowInserter

log = logging.getLogger(__name__)

_R = TypeVar("_R")

#: Kinds a flow answers.
USER_KINDS = frozenset({"message", "postback", "referral"})
#: Kinds that are only recorded, with their final status: the ingress settles them at once
#: (when their page is known), so they cost no processing at all.
RECORD_ONLY: dict[str, EventStatus] = {
    "echo": "done",  # our own messages, or a person's from the Page Inbox: never answered
    "reaction": "ignored",
    "optin": "ignored",
    "message_edit": "ignored",
    "request_thread_control": "ignored",
    "app_roles": "ignored",
    "account_linking": "ignored",
    "unknown": "ignored",
}
#: How long a page id is trusted as configured (or not) before the pages table is asked again.
PAGE_CACHE_SECONDS = 30.0
UNKNOWN_PAGE_CACHE_SECONDS = 5.0
#: After a failed profile fetch, how long to answer that user without one before trying again.
PROFILE_RETRY_SECONDS = 300.0
#: Profiles kept in memory (the contacts table has them all).
PROFILE_CACHE_SIZE = 100_000
#: Saves retried when someone else saved the conversation meanwhile (another process).
MAX_CONFLICTS = 3
#: Events per group-commit transaction: enough to amortize the commit, few enough that the
#: write lock is never held long (webhook acks wait for it on SQLite).
MAX_BATCH = 16

_PROFILE_TEXT = ("first_name", "last_name", "profile_pic", "locale", "gender")


@dataclass
class Outcome:
    """What processing an event did."""

    status: EventStatus
    outbound: int = 0
    faults: list[RuntimeFault] = field(default_factory=list)
    already_handled: bool = False
    #: The turn read `user.*` from a profile not fetched yet: nothing was written.
    needs_profile: bool = False
    #: Why the event cannot run yet (several instances: see `_gate`); nothing was written.
    deferred: str | None = None


class ProfileProbe(Mapping[str, Any]):
    """An empty profile that remembers being read. The engine builds its template context
    (and so reads the profile) only when a text or expression needs it, so a turn run with
    a probe that stayed untouched is exactly the turn the real profile would give: the
    User Profile API is called only for users whose flows show `user.*`."""

    def __init__(self) -> None:
        self.touched = False

    def __getitem__(self, key: str) -> Any:
        self.touched = True
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        self.touched = True
        return iter(())

    def __len__(self) -> int:
        self.touched = True
        return 0


class _Conflict(Exception):
    """The conversation changed since it was loaded: roll back and run the event again."""


# ----------------------------------------------------------------------------- statements

#: message_log rows as a turn writes them (`_log_row`): the inbound message and the replies
#: in one statement, in that order (ids ascending). A redelivered inbound message (its mid
#: logged already) is skipped; replies have no mid.
_LOG_COLUMNS = ("page_id", "psid", "direction", "mid", "kind", "body", "status", "created_at")
_FLOW_EVENT_COLUMNS = ("page_id", "psid", "flow_id", "step", "kind", "detail", "source", "at")
#: Trace entries kept as flow events (for `flowc monitor`), by the event kind they become: a
#: flow entered by `call` starts too (its end is traced when it returns). Faults come from
#: `Turn.faults`.
_FLOW_EVENT_KINDS = {"start": "start", "call": "start", "end": "end", "hand_over": "hand_over"}


#: Several instances on PostgreSQL: a conversation's event runs only while holding the
#: conversation's advisory lock (for its transaction; never waited for, so never a deadlock)
#: and when no earlier event of the conversation is still pending (in some instance's queue).
_GATE = text(
    "SELECT pg_try_advisory_xact_lock(:lock_key) AS locked, EXISTS (SELECT 1 FROM "
    "webhook_events WHERE page_id = :page_id AND psid = :psid AND status = 'pending' "
    "AND id < :event_id) AS earlier"
)


def conversation_lock_key(page_id: str, psid: str) -> int:
    """The conversation's advisory lock id: a stable signed 64-bit hash of (page, user)."""
    digest = hashlib.blake2b(f"{page_id}:{psid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _now() -> datetime:
    return datetime.now(UTC)


def _load(conn: Connection, page_id: str, psid: str) -> ConversationState:
    return load_state(conn, page_id, psid) or ConversationState(page_id=page_id, psid=psid)


def _save(conn: Connection, insert: Any, state: ConversationState) -> None:
    if not save_state(conn, insert, state):
        raise _Conflict


def outbound_body(item: Outbound) -> dict[str, Any]:
    """The message_log body of an outbound item, as the sender reads it."""
    return {"payload": item.body, "tag": item.tag, "seconds": item.seconds, "source": item.source}


def inbound_body(event: Inbound) -> dict[str, Any]:
    """The message_log body of a user's message (what a person reading the log needs)."""
    body: dict[str, Any] = {}
    if event.text is not None:
        body["text"] = event.text
    if event.payload is not None:
        body["payload"] = event.payload
    if event.ref is not None:
        body["ref"] = event.ref
    if event.attachments:
        body["attachments"] = list(event.attachments)
    return body


def flow_events(page_id: str, psid: str, turn: Turn) -> list[tuple[Any, ...]]:
    """The `flow_events` rows of a turn (in the order of `_FLOW_EVENT_COLUMNS`): flows
    started and ended, hand-overs, faults."""
    now = _now()
    rows = [
        (page_id, psid, entry.flow, entry.step, _FLOW_EVENT_KINDS[entry.kind], None, None, now)
        for entry in turn.trace
        if entry.kind in _FLOW_EVENT_KINDS
    ]
    rows += [
        (page_id, psid, fault.flow_id, fault.step, "fault", fault.reason, fault.source, now)
        for fault in turn.faults
    ]
    return rows


def _log_row(
    event: StoredEvent,
    direction: str,
    kind: str,
    body: dict[str, Any],
    at: datetime,
    mid: str | None = None,
) -> tuple[Any, ...]:
    """A message_log row in the order of `_LOG_COLUMNS`."""
    status = "received" if direction == "inbound" else "pending"
    return (event.page_id, event.psid, direction, mid, kind, body, status, at)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _contact(page_id: str, psid: str, data: dict[str, Any]) -> Contact:
    """A contact from a User Profile API answer, keeping only values of the expected types."""
    values: dict[str, Any] = {name: _text(data.get(name)) for name in _PROFILE_TEXT}
    timezone = data.get("timezone")
    is_number = isinstance(timezone, int | float) and not isinstance(timezone, bool)
    values["timezone"] = float(timezone) if is_number else None
    return Contact(page_id, psid, **values)


#: Watermarks are milliseconds since the epoch; beyond year 9999 no date can hold them.
_MAX_WATERMARK = 253_402_300_799_000


def _watermark(value: Any) -> int | None:
    """A receipt's watermark, or None when it is not a usable time (a forged or broken
    receipt must not fail its event)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_WATERMARK:
        return value
    return None


# ----------------------------------------------------------------------------- group commit

Job = Callable[[Connection], _R]


class GroupCommit:
    """Runs jobs (functions of a connection) on writer threads, several per transaction.

    `await run(job)` returns the job's result once its transaction is committed. A job may
    run more than once (after a failure of another job in its batch, or a `_Conflict`), so it
    must read what it needs inside the transaction. SQLite gets one writer thread (its writes
    are serial anyway); PostgreSQL several, each with its own connection."""

    def __init__(
        self,
        engine: Engine,
        *,
        lock: AbstractContextManager[Any] | None = None,
        threads: int | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.engine = engine
        self._lock = lock if lock is not None else write_lock(engine)
        sqlite_ = engine.dialect.name == "sqlite"
        self._threads = threads or (1 if sqlite_ else 4)
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Job[Any], asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._workers: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start the writer threads (call from the event loop that awaits `run`)."""
        if self._workers:
            return
        self._loop = asyncio.get_running_loop()
        for n in range(self._threads):
            worker = threading.Thread(target=self._work, name=f"flow-commit-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued jobs, then stop the threads."""
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(timeout)
        self._workers = []

    async def run(self, job: Job[_R]) -> _R:
        """Run `job` in a transaction (shared with other jobs); raises what it raised."""
        if self._loop is None or not self._workers:
            raise RuntimeError("the group commit is not running")
        future: asyncio.Future[_R] = self._loop.create_future()
        self._queue.put((job, future))
        return await future

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # for this thread's next turn: finish, then stop
                    break
                batch.append(more)
            self._execute(batch)

    def _execute(self, batch: list[tuple[Job[Any], asyncio.Future[Any]]]) -> None:
        outcomes: list[Any] = []
        try:
            with self._lock, self.engine.begin() as conn:
                for job, _ in batch:
                    outcomes.append(job(conn))
        except Exception:
            # Something in the batch failed and everything rolled back: give every job a
            # transaction of its own, so that only the failing one fails.
            outcomes = [self._alone(job) for job, _ in batch]
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self._loop.call_soon_threadsafe(_resolve, [f for _, f in batch], outcomes)

    def _alone(self, job: Job[Any]) -> Any:
        for _ in range(MAX_CONFLICTS):
            try:
                with self._lock, self.engine.begin() as conn:
                    return job(conn)
            except _Conflict:
                continue  # someone else saved the conversation: load it again
            except Exception as e:
                return _Failed(e)
        return _Failed(RuntimeError("the conversation keeps changing under us"))


@dataclass(frozen=True)
class _Failed:
    error: Exception


def _resolve(futures: list[asyncio.Future[Any]], outcomes: list[Any]) -> None:
    for future, outcome in zip(futures, outcomes, strict=True):
        if future.done():
            continue  # the waiting task was cancelled (shutdown)
        if isinstance(outcome, _Failed):
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome)


# ----------------------------------------------------------------------------- processor


class Processor:
    """Processes stored events (see the module docstring). `handle` is the dispatcher's
    handler: it raises on errors worth retrying (the database, a bug) and records the rest.

    - `program()` returns the running program (it changes on reload);
    - `pages` is the `PageRegistry` (which pages exist, their tokens for profile calls);
    - `graph` fetches user profiles (None: no profiles);
    - `notify(page_id, psid)` tells the sender a conversation has new outbound messages;
    - `app_id` is our Meta app id, to tell hand-overs to us from hand-overs away;
    - `profiles_when_read`: fetch a user's profile only when a turn reads `user.*` (see
      `ProfileProbe`) instead of before their first event. Fewer Graph calls (they count
      against the page's rate limit) and a faster first answer when the flows never show the
      profile. The server turns it on (`create_app`); off, the profile is fetched before a
      user's first event.
    - `gate`: take the conversation lock and check the order across instances (see
      `_gate`); default on PostgreSQL. Off only to measure what it costs (bench/scale.py)."""

    def __init__(
        self,
        engine: Engine,
        *,
        program: Callable[[], ProgramView | None],
        pages: Any,
        graph: Any = None,
        metrics: Metrics | None = None,
        notify: Callable[[str, str], None] | None = None,
        app_id: str | None = None,
        threads: int = 4,
        writers: int | None = None,
        profiles_when_read: bool = False,
        gate: bool | None = None,
    ) -> None:
        self.engine = engine
        self.inbox = Inbox(engine)
        self.store = SqlStore(engine)
        self._lock = self.inbox.lock
        self._insert = insert_statement(engine.dialect.name)
        self._log = RowInserter(
            engine, tables.message_log, _LOG_COLUMNS, suffix="ON CONFLICT (mid) DO NOTHING"
        )
        self._flow_events = RowInserter(engine, tables.flow_events, _FLOW_EVENT_COLUMNS)
        self._program = program
        self._pages = pages
        self._graph = graph
        self.metrics = metrics or Metrics()
        self._notify = notify
        self.app_id = app_id
        self.profiles_when_read = profiles_when_read
        # Other instances may share the database (PostgreSQL): see `_gate`.
        self._shared = engine.dialect.name != "sqlite" if gate is None else gate
        # Reads (pages, contacts) and receipts; the event transactions go to `_commit`.
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="flow-process")
        self._commit = GroupCommit(engine, lock=self._lock, threads=writers)
        self._page_cache: dict[str, tuple[float, Any]] = {}
        self._tokens: dict[str, tuple[float, str | None]] = {}
        self._profiles: dict[tuple[str, str], dict[str, Any]] = {}
        self._profile_retry: dict[tuple[str, str], float] = {}
        self._counters: dict[tuple[str, str], Any] = {}

    def start(self) -> None:
        """Start the writer threads (call from the running event loop)."""
        self._commit.start()

    def close(self) -> None:
        """Stop the threads (after the dispatcher stopped)."""
        self._commit.stop()
        self._executor.shutdown(wait=True)

    async def _thread(self, fn: Callable[..., _R], *args: Any) -> _R:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ------------------------------------------------------------------ the dispatcher's API

    async def handle(self, event: StoredEvent) -> None:
        """Process one event; raises when it should be tried again."""
        started = time.perf_counter()
        kind = event.kind
        page = await self._page(event.page_id)
        if page is None:
            log.warning(
                "event %s is for page %s, which is not configured (flowc page add): "
                "stored, not processed",
                event.id,
                event.page_id or "(none)",
            )
            outcome = await self._commit.run(partial(self._finish, event, "unknown_page"))
        elif kind in USER_KINDS and event.psid is not None:
            inbound = to_inbound(kind, event.payload)
            if inbound is None:
                outcome = await self._commit.run(partial(self._finish, event, "ignored"))
            else:
                view = self._program()
                if view is None:
                    raise RuntimeError("the flows are not loaded")
                page_vars = {"id": event.page_id}
                if getattr(page, "name", None):
                    page_vars["name"] = page.name
                profile: Mapping[str, Any] | None = self._known_profile(event.page_id, event.psid)
                if profile is None:
                    if self.profiles_when_read:
                        profile = ProfileProbe()
                    else:
                        profile = await self._profile(event.page_id, event.psid)
                job = partial(self._turn, event, inbound, view, profile, page_vars)
                outcome = await self._commit.run(job)
                if outcome.deferred:
                    raise Deferred(outcome.deferred)
                if outcome.needs_profile:
                    profile = await self._profile(event.page_id, event.psid)
                    job = partial(self._turn, event, inbound, view, profile, page_vars)
                    outcome = await self._commit.run(job)
                    if outcome.deferred:
                        raise Deferred(outcome.deferred)
        else:
            outcome = await self._other(event)
            if outcome.deferred:
                raise Deferred(outcome.deferred)
        for fault in outcome.faults:
            self.metrics.runtime_faults.inc()
            log.warning("conversation %s/%s: %s", event.page_id, event.psid, fault)
        if outcome.outbound and self._notify is not None and event.psid is not None:
            self._notify(event.page_id, event.psid)
        if not outcome.already_handled:
            self._processed(kind, outcome.status).inc()
        self.metrics.processing_seconds.observe(time.perf_counter() - started)
        self.metrics.event_lag_seconds.observe(
            max(0.0, (_now() - event.received_at).total_seconds())
        )

    @staticmethod
    def is_transient(error: BaseException) -> bool:
        """The dispatcher's test for passing errors: the database is unreachable or
        restarting, or broke a deadlock (the event is retried without counting an attempt)."""
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, InterfaceError):
            return True
        if isinstance(error, OperationalError):
            if isinstance(error.orig, sqlite3.Error):
                # SQLite reports a missing table as "operational" too: only a lock passes.
                return "locked" in str(error.orig) or "busy" in str(error.orig)
            return True  # PostgreSQL: connection lost, server shutting down, deadlock
        return False

    async def on_failure(
        self, event: StoredEvent, attempt: int, error: BaseException, final: bool
    ) -> None:
        """The dispatcher's failure hook: count the attempt, or give the event up."""
        reason = f"{type(error).__name__}: {error}"
        if final:
            await self._thread(self._give_up, event, reason)
            self.metrics.events_failed.labels(event.kind).inc()
            log.error("event %s (%s) failed for good: %s", event.id, event.kind, reason)
        else:
            await self._thread(self.inbox.record_attempt, event.id, attempt, reason)

    def forget(self, page_id: str, psid: str) -> None:
        """Drop what is cached about a person whose data was erased (`flowc user forget`)."""
        self._profiles.pop((page_id, psid), None)
        self._profile_retry.pop((page_id, psid), None)

    def _processed(self, kind: str, status: str) -> Any:
        child = self._counters.get((kind, status))
        if child is None:
            child = self._counters[(kind, status)] = self.metrics.events_processed.labels(
                kind, status
            )
        return child

    def _give_up(self, event: StoredEvent, reason: str) -> None:
        self.inbox.finish(event.id, "failed", error=reason)

    # ------------------------------------------------------------------ pages and profiles

    async def _page(self, page_id: str) -> Any:
        now = time.monotonic()
        cached = self._page_cache.get(page_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        page = await self._thread(self._pages.get, page_id) if page_id else None
        ttl = PAGE_CACHE_SECONDS if page is not None else UNKNOWN_PAGE_CACHE_SECONDS
        self._page_cache[page_id] = (now + ttl, page)
        return page

    def settle(self, event: WebhookEvent) -> EventStatus | None:
        """The final status of an event that needs no processing (see RECORD_ONLY; standby
        events other than receipts), for the ingress; None when it must be processed. Only
        for pages known to be configured: the others' events go the long way and end up
        'unknown_page'. Thread-safe (reads the page cache only)."""
        kind = event.kind
        if kind == "standby":
            status: EventStatus | None = (
                None if event.inner_kind in ("delivery", "read") else "ignored"
            )
        else:
            status = RECORD_ONLY.get(kind)
        if status is None:
            return None
        cached = self._page_cache.get(event.page_id)
        if cached is None or cached[1] is None or cached[0] <= time.monotonic():
            return None
        return status

    def forget_pages(self) -> None:
        """Ask the pages table again for every page (after `flowc page add` or remove)."""
        self._page_cache.clear()
        self._tokens.clear()

    def _known_profile(self, page_id: str, psid: str) -> dict[str, Any] | None:
        """The profile when it is in memory ({} while a failed fetch waits to be retried);
        None when it would take the database or the Graph API to know it."""
        key = (page_id, psid)
        cached = self._profiles.get(key)
        if cached is not None:
            return cached
        if self._profile_retry.get(key, 0.0) > time.monotonic():
            return {}
        return None

    async def _profile(self, page_id: str, psid: str) -> dict[str, Any]:
        """The user's profile for `user.*`: from memory, the contacts table, or (on first
        contact) the User Profile API. Never fails: a failed fetch is an empty profile."""
        key = (page_id, psid)
        cached = self._profiles.get(key)
        if cached is not None:
            return cached
        if self._profile_retry.get(key, 0.0) > time.monotonic():
            return {}  # the last fetch failed a moment ago
        contact = await self._thread(self.store.get_contact, page_id, psid)
        if contact is None:
            if self._graph is None:
                return {}
            contact = await self._fetch_profile(page_id, psid)
            if contact is None:
                self._profile_retry[key] = time.monotonic() + PROFILE_RETRY_SECONDS
                return {}
            self._profile_retry.pop(key, None)
        profile = {k: v for k, v in contact.user_variables().items() if v is not None}
        if len(self._profiles) >= PROFILE_CACHE_SIZE:
            self._profiles.clear()  # cheap and rare; the contacts table still has them
        self._profiles[key] = profile
        return profile

    async def _fetch_profile(self, page_id: str, psid: str) -> Contact | None:
        try:
            token = await self._token(page_id)
            if not token:
                return None
            data = await self._graph.get_profile(token, psid)
            contact = _contact(page_id, psid, data if isinstance(data, dict) else {})
            await self._thread(self._save_contact, contact)
        except Exception as e:  # no profile is better than no answer
            log.info("no profile for %s/%s: %s", page_id, psid, e)
            return None
        return contact

    async def _token(self, page_id: str) -> str | None:
        now = time.monotonic()
        cached = self._tokens.get(page_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        token = await self._thread(self._pages.token, page_id)
        self._tokens[page_id] = (now + PAGE_CACHE_SECONDS, token)
        return token

    def _save_contact(self, contact: Contact) -> None:
        with self._lock:
            self.store.save_contact(contact)

    # ------------------------------------------------------------------ transactions (jobs)

    def _finish(self, event: StoredEvent, status: EventStatus, conn: Connection) -> Outcome:
        handled = not self._claim(conn, event, status)
        return Outcome(status, already_handled=handled)

    def _turn(
        self,
        event: StoredEvent,
        inbound: Inbound,
        view: ProgramView,
        profile: Mapping[str, Any],
        page_vars: dict[str, Any],
        conn: Connection,
    ) -> Outcome:
        """A user event: the whole step in one transaction (see the module docstring).
        With a `ProfileProbe` that the step reads, nothing is written: the caller fetches
        the profile and runs the event again."""
        assert event.psid is not None
        busy = self._gate(conn, event)
        if busy:
            return Outcome("pending", deferred=busy)
        state = _load(conn, event.page_id, event.psid)
        turn = None
        if not state.handed_over:  # else a person has the thread: record only
            turn = advance(view, state, inbound, profile=profile, page=page_vars)
            if isinstance(profile, ProfileProbe) and profile.touched:
                return Outcome("pending", needs_profile=True)
        if not self._claim(conn, event, "done"):
            return Outcome("done", already_handled=True)
        now = _now()
        rows = [_log_row(event, "inbound", inbound.kind, inbound_body(inbound), now, inbound.mid)]
        if turn is None:
            self._log.insert(conn, rows)
            return Outcome("done")
        _save(conn, self._insert, turn.state)
        rows += [
            _log_row(event, "outbound", item.kind, outbound_body(item), now) for item in turn.outbox
        ]
        self._log.insert(conn, rows)
        self._flow_events.insert(conn, flow_events(event.page_id, event.psid, turn))
        return Outcome("done", outbound=len(rows) - 1, faults=turn.faults)

    def _handover(self, event: StoredEvent, psid: str, ours: bool, conn: Connection) -> Outcome:
        busy = self._gate(conn, event)
        if busy:
            return Outcome("pending", deferred=busy)
        if not self._claim(conn, event, "done"):
            return Outcome("done", already_handled=True)
        state = _load(conn, event.page_id, psid)
        new = take_back(state) if ours else replace(state, handed_over=True)
        _save(conn, self._insert, new)
        return Outcome("done")

    # ------------------------------------------------------------------ other kinds

    async def _other(self, event: StoredEvent) -> Outcome:
        """Every event that is not a user event for a flow."""
        kind: EventKind = event.kind
        psid = event.psid
        inner = event.inner_kind
        if psid is not None and inner in ("delivery", "read"):
            await self._thread(self._receipt, event.page_id, psid, inner, event.payload[inner])
            status: EventStatus = "done"
        elif kind == "standby":
            status = "ignored"  # another app owns the thread: recorded only
        elif psid is not None and kind in ("pass_thread_control", "take_thread_control"):
            body = event.payload[kind]
            ours = self._owned_by_us(kind, body.get("new_owner_app_id"))
            outcome = await self._commit.run(partial(self._handover, event, psid, ours))
            log.info(
                "conversation %s/%s %s",
                event.page_id,
                psid,
                "is back with the bot" if ours else "was handed over",
            )
            return outcome
        else:
            if kind == "policy_enforcement":
                log.error("Meta policy enforcement on page %s: %s", event.page_id, event.payload)
            status = RECORD_ONLY.get(kind, "ignored")
        return await self._commit.run(partial(self._finish, event, status))

    def _receipt(self, page_id: str, psid: str, kind: str, body: dict[str, Any]) -> None:
        # Idempotent (watermarks), so it need not share the event's transaction.
        watermark = _watermark(body.get("watermark"))
        if watermark is None:
            return
        with self._lock:
            if kind == "delivery":
                listed = body.get("mids")
                mids = [m for m in listed if isinstance(m, str)] if isinstance(listed, list) else []
                self.store.mark_delivered(page_id, psid, watermark, mids)
            else:
                self.store.mark_read(page_id, psid, watermark)

    def _owned_by_us(self, kind: str, new_owner: Any) -> bool:
        owner = None if new_owner is None else str(new_owner)
        if self.app_id is not None:
            return owner == self.app_id
        # Without our app id: a pass_thread_control is delivered to the app receiving the
        # thread (us, unless it names the Page Inbox); a take_thread_control to the app that
        # lost it (us).
        return kind == "pass_thread_control" and owner != PAGE_INBOX_APP_ID

    def _gate(self, conn: Connection, event: StoredEvent) -> str | None:
        """Why the conversation's event cannot run now, or None (always None on SQLite,
        where one process owns the database and the dispatcher keeps the order)."""
        if not self._shared or event.psid is None:
            return None
        row = conn.execute(
            _GATE,
            {
                "lock_key": conversation_lock_key(event.page_id, event.psid),
                "page_id": event.page_id,
                "psid": event.psid,
                "event_id": event.id,
            },
        ).one()
        if not row.locked:
            return "another instance is processing this conversation"
        if row.earlier:
            return "an earlier event of this conversation is still pending"
        return None

    def _claim(self, conn: Connection, event: StoredEvent, status: EventStatus) -> bool:
        return self.inbox.finish(event.id, status, conn=conn)
