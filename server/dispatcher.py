"""Ordered processing of stored webhook events: one conversation at a time, many in parallel.

Events of one (page, user) run strictly one after another in id order; different
conversations run side by side on a fixed number of workers. A worker takes one event of a
conversation and then puts the conversation back at the end of the line, so a chatty user
cannot starve the others. A failing event is retried with backoff (its conversation waits:
order before progress) and given up after `max_attempts`.

A handler may also raise `Deferred`: the event cannot run yet (with several server instances
on one database, an earlier event of the conversation is still pending elsewhere, or another
instance is processing the conversation right now). It goes back to its place in the queue and
the conversation is tried again after a short delay, without counting an attempt."""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from server.inbox import StoredEvent

log = logging.getLogger(__name__)

Conversation = tuple[str, str | None]
#: Handles one event; raising means "try again later".
Handler = Callable[[StoredEvent], Awaitable[None]]
#: Whether an error is passing (the database is restarting): retried without counting an
#: attempt, however long it lasts, so an outage loses no event.
Transient = Callable[[BaseException], bool]
#: Told about a failed attempt (attempt number, error, whether it was the last one). It
#: records the failure; if it raises (the database is down), the event is retried anyway.
FailureHook = Callable[[StoredEvent, int, BaseException, bool], Awaitable[None]]

DEFAULT_CONCURRENCY = 32
DEFAULT_MAX_ATTEMPTS = 5
#: First and longest wait before a deferred event is tried again.
DEFER_DELAY = 0.02
MAX_DEFER_DELAY = 1.0


class Deferred(Exception):
    """Raised by a handler: the event cannot be processed yet; try it again shortly."""


class Dispatcher:
    """Runs events through `handler` in order per conversation (see the module docstring).

    `submit` may be called before `start`: the events wait. Call everything from the event
    loop's thread."""

    def __init__(
        self,
        handler: Handler,
        *,
        on_failure: FailureHook | None = None,
        is_transient: Transient | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff: float = 0.05,
        max_backoff: float = 5.0,
    ) -> None:
        self._handler = handler
        self._on_failure = on_failure
        self._is_transient = is_transient
        self._concurrency = concurrency
        self.max_attempts = max_attempts
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._queues: dict[Conversation, deque[StoredEvent]] = {}
        self._ready: asyncio.Queue[Conversation] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._seen: set[int] = set()  # ids queued or running: a reload never queues one twice
        self._deferrals: dict[int, int] = {}  # event id -> times deferred in a row
        self._depth = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    @property
    def depth(self) -> int:
        """Events waiting or running."""
        return self._depth

    def has(self, event_id: int) -> bool:
        """Whether the event is queued or running here."""
        return event_id in self._seen

    def submit(self, events: Iterable[StoredEvent]) -> None:
        """Queue events (in id order) behind their conversation's earlier ones."""
        for event in events:
            if event.id in self._seen:
                continue
            self._seen.add(event.id)
            self._depth += 1
            self._idle.clear()
            key = event.conversation
            waiting = self._queues.get(key)
            if waiting is None:
                self._queues[key] = deque((event,))
                self._ready.put_nowait(key)
            else:
                _insert(waiting, event)

    def start(self) -> None:
        """Start the workers (call from the running event loop)."""
        if self._workers:
            return
        self._stopping = False
        self._workers = [
            asyncio.create_task(self._work(), name=f"flow-dispatch-{n}")
            for n in range(self._concurrency)
        ]

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued event is handled; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout: float = 10.0) -> None:
        """Let running events finish (up to `timeout`), then stop. Events still queued stay
        pending in the database and run at the next start."""
        self._stopping = True
        if not self._workers:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._running() > 0 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    def _running(self) -> int:
        """Events a worker holds right now (the others wait in their conversation's queue)."""
        return self._depth - sum(len(q) for q in self._queues.values())

    async def _work(self) -> None:
        while True:
            key = await self._ready.get()
            if self._stopping:
                continue  # leave it queued: it is pending in the database
            waiting = self._queues[key]
            event = waiting.popleft()
            try:
                deferred = await self._run(event)
            except BaseException:
                self._done(key, waiting, event)
                raise
            if deferred:
                self._defer(key, waiting, event)
            else:
                self._done(key, waiting, event)

    def _done(self, key: Conversation, waiting: deque[StoredEvent], event: StoredEvent) -> None:
        self._depth -= 1
        self._seen.discard(event.id)
        if waiting:
            self._ready.put_nowait(key)
        else:
            del self._queues[key]
        if self._depth == 0:
            self._idle.set()

    def _defer(self, key: Conversation, waiting: deque[StoredEvent], event: StoredEvent) -> None:
        """Put a deferred event back in its place and try its conversation again later."""
        _insert(waiting, event)
        times = self._deferrals[event.id] = self._deferrals.get(event.id, 0) + 1
        delay = min(MAX_DEFER_DELAY, DEFER_DELAY * 2 ** min(times - 1, 10))
        asyncio.get_running_loop().call_later(delay, self._ready.put_nowait, key)

    async def _run(self, event: StoredEvent) -> bool:
        """Handle one event, retrying failures; True when it was deferred."""
        attempt = event.attempts
        outage = 0
        while True:
            try:
                await self._handler(event)
                self._deferrals.pop(event.id, None)
                return False
            except Deferred as why:
                log.debug("event %s deferred: %s", event.id, why)
                return True
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if self._is_transient is not None and self._is_transient(error):
                    outage += 1
                    if outage == 1:
                        log.warning("event %s waits for the database: %s", event.id, error)
                    if self._stopping:
                        return False
                    delay = min(self._max_backoff, self._backoff * 2 ** min(outage - 1, 10))
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    continue
                attempt += 1
                final = attempt >= self.max_attempts
                log.warning(
                    "event %s (%s) failed, attempt %d of %d: %s",
                    event.id,
                    event.kind,
                    attempt,
                    self.max_attempts,
                    error,
                )
                if self._on_failure is not None:
                    try:
                        await self._on_failure(event, attempt, error, final)
                    except Exception as hook_error:
                        # Cannot even record it (database down): keep the event and retry.
                        log.warning("cannot record event %s's failure: %s", event.id, hook_error)
                        final = False
                if final or self._stopping:
                    self._deferrals.pop(event.id, None)
                    return False
                delay = min(self._max_backoff, self._backoff * 2 ** (attempt - 1))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))


def _insert(waiting: deque[StoredEvent], event: StoredEvent) -> None:
    """Put `event` into a conversation's queue in id order (normally at the end)."""
    if not waiting or waiting[-1].id < event.id:
        waiting.append(event)
    else:
        waiting.insert(bisect.bisect(waiting, event.id, key=lambda e: e.id), event)
