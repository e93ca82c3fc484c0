"""Ordered processing of stored webhook events: one conversation at a time, many in parallel.

Events of one (page, user) run strictly one after another in id order; different
conversations run side by side on a fixed number of workers. A worker takes one event of a
conversation and then puts the conversation back at the end of the line, so a chatty user
cannot starve the others. A failing event is retried with backoff (its conversation waits:
order before progress) and given up after `max_attempts`."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from server.inbox import StoredEvent

log = logging.getLogger(__name__)

Conversation = tuple[str, str | None]
#: Handles one event; raising means "try again later".
Handler = Callable[[StoredEvent], Awaitable[None]]
#: Told about a failed attempt (attempt number, error, whether it was the last one). It
#: records the failure; if it raises (the database is down), the event is retried anyway.
FailureHook = Callable[[StoredEvent, int, BaseException, bool], Awaitable[None]]

DEFAULT_CONCURRENCY = 32
DEFAULT_MAX_ATTEMPTS = 5


class Dispatcher:
    """Runs events through `handler` in order per conversation (see the module docstring).

    `submit` may be called before `start`: the events wait. Call everything from the event
    loop's thread."""

    def __init__(
        self,
        handler: Handler,
        *,
        on_failure: FailureHook | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff: float = 0.05,
        max_backoff: float = 5.0,
    ) -> None:
        self._handler = handler
        self._on_failure = on_failure
        self._concurrency = concurrency
        self.max_attempts = max_attempts
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._queues: dict[Conversation, deque[StoredEvent]] = {}
        self._ready: asyncio.Queue[Conversation] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._seen: set[int] = set()  # ids queued or running: a reload never queues one twice
        self._depth = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    @property
    def depth(self) -> int:
        """Events waiting or running."""
        return self._depth

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
                waiting.append(event)

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
                await self._run(event)
            finally:
                self._depth -= 1
                self._seen.discard(event.id)
                if waiting:
                    self._ready.put_nowait(key)
                else:
                    del self._queues[key]
                if self._depth == 0:
                    self._idle.set()

    async def _run(self, event: StoredEvent) -> None:
        attempt = event.attempts
        while True:
            try:
                await self._handler(event)
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:
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
                    return
                delay = min(self._max_backoff, self._backoff * 2 ** (attempt - 1))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
