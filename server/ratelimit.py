"""Per-page send rate limiting: a token bucket per page, plus a pause when Meta says "slow down".

Meta allows 300 Send API calls per second per page (reference §7); the default of 250/s keeps
a margin. Callers await `acquire(page_id)` before each call. Waiting callers are served in the
order they asked: each one reserves the next free slot (the bucket may go negative), so no
lock is needed on the event loop and nobody is starved. One page's limit never slows another
page down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

#: Send API calls per second per page, and how many may go out at once after a quiet spell.
DEFAULT_RATE = 250.0
DEFAULT_BURST = 25.0


class TokenBucket:
    """`rate` calls per second on average, at most `burst` at once. Not thread-safe: use it
    from one event loop."""

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._updated = clock()
        self._paused_until = 0.0

    def reserve(self) -> float:
        """Take one token now; returns how long to wait (seconds) before using it."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= 1.0
        wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        return max(wait, self._paused_until - now)

    def pause(self, seconds: float) -> None:
        """Let nothing through for `seconds` from now (e.g. after a rate-limit error). A longer
        pause already in force stays."""
        until = self._clock() + seconds
        if until > self._paused_until:
            self._paused_until = until
            # Everything saved up was spent by whoever triggered the limit.
            self._tokens = min(self._tokens, 0.0)

    @property
    def paused_for(self) -> float:
        """Seconds until a pause ends (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())


class PageRateLimiter:
    """One `TokenBucket` per page id, created on first use."""

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limiter needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._buckets: dict[str, TokenBucket] = {}

    def bucket(self, page_id: str) -> TokenBucket:
        """The bucket of a page."""
        bucket = self._buckets.get(page_id)
        if bucket is None:
            bucket = self._buckets[page_id] = TokenBucket(self.rate, self.burst, clock=self._clock)
        return bucket

    async def acquire(self, page_id: str) -> None:
        """Wait until the page may make one more call.

        A pause that starts while a caller waits (another conversation hit a rate limit) is
        honoured too: the caller checks again when its slot comes."""
        bucket = self.bucket(page_id)
        wait = bucket.reserve()
        while wait > 0:
            await self._sleep(wait)
            wait = bucket.paused_for

    def pause(self, page_id: str, seconds: float) -> None:
        """Stop the page's calls for `seconds` (Meta answered with a rate-limit error)."""
        self.bucket(page_id).pause(seconds)
