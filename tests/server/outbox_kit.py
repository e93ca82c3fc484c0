"""Helpers for the Graph client, sender and pages tests: databases, a scripted fake Graph API
behind `httpx.MockTransport` (Meta is the one edge we mock), and a sender harness."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dbkit
import httpx
import pytest
from dbkit import pg_schema
from sqlalchemy import select
from sqlalchemy.engine import Engine

from runtime import db, tables
from runtime.store import SqlStore
from server.crypto import TokenCipher
from server.graph import GraphClient, create_http_client
from server.pages import PageRegistry
from server.ratelimit import PageRateLimiter
from server.sender import RetryPolicy, Sender, SendResult

PG_URL = dbkit.PG_URL
needs_pg = pytest.mark.skipif(not PG_URL, reason="FLOW_TEST_DATABASE_URL is not set")
#: SQLite always; PostgreSQL when FLOW_TEST_DATABASE_URL is set.
SQL_BACKENDS = ["sqlite", pytest.param("postgresql", marks=needs_pg)]

APP_SECRET = "test-app-secret"
SECRET_KEY = "test-secret-key-0123456789abcdef"
PAGE = "1111111111"
OTHER_PAGE = "2222222222"
TOKEN = "EAAB-page-token-SECRET-1"
NEW_TOKEN = "EAAB-page-token-SECRET-2"
OTHER_TOKEN = "EAAB-other-token-SECRET-3"
BASE_URL = "https://graph.test/v25.0"
#: Backoff small enough to keep the suite fast, with no jitter so delays can be asserted.
FAST_RETRY = RetryPolicy(base_delay=0.01, max_delay=0.05, max_attempts=4, jitter=0.0)


def proof(token: str) -> str:
    """Meta's appsecret_proof for a token under APP_SECRET."""
    return hmac.new(APP_SECRET.encode(), token.encode(), hashlib.sha256).hexdigest()


# ----------------------------------------------------------------------------- databases


@contextmanager
def pg_migrated() -> Iterator[str]:
    """A migrated PostgreSQL schema for a whole test module (see `migrated_url`)."""
    with pg_schema() as url:
        db.upgrade(url)
        yield url


@contextmanager
def migrated_url(backend: str, tmp_path: Path, pg_url: str | None = None) -> Iterator[str]:
    """A migrated database with empty tables on `backend`: a new SQLite file, or the
    PostgreSQL schema at `pg_url` emptied (a new schema when None)."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'flowlang.db'}"
        db.upgrade(url)
        yield url
    elif pg_url is None:
        with pg_migrated() as url:
            yield url
    else:
        engine = db.create_engine_for(pg_url)
        try:
            with engine.begin() as conn:
                for table in tables.metadata.sorted_tables:
                    conn.execute(table.delete())
        finally:
            engine.dispose()
        yield pg_url


def raw_rows(engine: Engine, table: str) -> list[tuple[Any, ...]]:
    """Every row of a table as the database holds it."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(select(tables.metadata.tables[table]))]


# ----------------------------------------------------------------------------- fake Graph API


@dataclass
class Call:
    """One request the fake Graph API received."""

    method: str
    path: str
    params: dict[str, str]
    headers: httpx.Headers
    json: dict[str, Any] | None
    at: float

    @property
    def token(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None

    @property
    def psid(self) -> str | None:
        if self.json and isinstance(self.json.get("recipient"), dict):
            return self.json["recipient"].get("id")
        return None


def meta_error(
    code: int,
    subcode: int | None = None,
    status: int = 400,
    message: str = "error",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Meta's error answer."""
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["fbtrace_id"] = "Atrace"
    return httpx.Response(status, json={"error": error}, headers=headers)


#: What a scripted answer may be: a response, an exception to raise, or a coroutine to run
#: first (e.g. waiting on an event) and then answer normally.
Answer = httpx.Response | Exception | Callable[[], Awaitable[None]]


@dataclass
class FakeGraph:
    """Records requests and answers like Meta. `script(psid, *answers)` queues answers for
    a user's next calls (by recipient id); `by_token` answers per page token. Unscripted calls
    succeed with Meta's shapes."""

    calls: list[Call] = field(default_factory=list)
    scripts: dict[str, list[Answer]] = field(default_factory=dict)
    by_token: dict[str, Callable[[], Answer]] = field(default_factory=dict)
    _ids: int = 0

    def script(self, psid: str, *answers: Answer) -> None:
        """Answer the next calls for `psid` with `answers`, in order."""
        self.scripts.setdefault(psid, []).extend(answers)

    def transport(self) -> httpx.MockTransport:
        """A transport for the Graph client."""
        return httpx.MockTransport(self._handle)

    def for_psid(self, psid: str) -> list[Call]:
        """The calls made for one user, in order."""
        return [c for c in self.calls if c.psid == psid]

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        call = Call(
            request.method,
            request.url.path,
            dict(request.url.params),
            request.headers,
            body,
            asyncio.get_running_loop().time(),
        )
        self.calls.append(call)
        answer: Answer | None = None
        if call.token in self.by_token:
            answer = self.by_token[call.token]()
        queue = self.scripts.get(call.psid or "")
        if answer is None and queue:
            answer = queue.pop(0)
        while callable(answer) and not isinstance(answer, httpx.Response):
            await answer()
            answer = None
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return self._success(call)

    def _success(self, call: Call) -> httpx.Response:
        if call.method == "GET":
            return httpx.Response(200, json={"first_name": "Ada", "last_name": "Lovelace"})
        if call.path.endswith("_thread_control"):
            return httpx.Response(200, json={"success": True})
        assert call.json is not None
        if "sender_action" in call.json:
            return httpx.Response(200, json={"recipient_id": call.psid})
        self._ids += 1
        return httpx.Response(200, json={"recipient_id": call.psid, "message_id": f"m_{self._ids}"})


# ----------------------------------------------------------------------------- sender harness


@dataclass
class Harness:
    """A migrated database with a page, a fake Graph API and a sender over them."""

    url: str
    store: SqlStore
    registry: PageRegistry
    graph: FakeGraph
    client: GraphClient
    results: list[SendResult]

    @property
    def engine(self) -> Engine:
        return self.store.engine

    def outbound(
        self,
        psid: str,
        kind: str,
        payload: dict[str, Any] | None = None,
        *,
        page_id: str = PAGE,
        tag: str | None = None,
        seconds: float = 0.0,
    ) -> int:
        """Log a pending outbound row the way the processor does; returns its id."""
        body = {"payload": payload or {}, "tag": tag, "seconds": seconds, "source": "t.flow:1"}
        return self.store.log_outbound(page_id, psid, kind, body)

    def rows(self, psid: str, page_id: str = PAGE) -> list[Any]:
        """A user's outbound rows, oldest first."""
        return [
            m for m in self.store.messages(page_id, psid, limit=1000) if m.direction == "outbound"
        ]

    def sender(self, **options: Any) -> Sender:
        """A sender with fast retries and page checks (override with `options`)."""
        options.setdefault("retry", FAST_RETRY)
        options.setdefault("page_check_interval", 0.02)
        options.setdefault("limiter", PageRateLimiter(rate=10_000, burst=1000))
        options.setdefault("on_result", self.results.append)
        return Sender(self.engine, self.client, self.registry, **options)


@contextmanager
def harness(backend: str, tmp_path: Path, pg_url: str | None = None) -> Iterator[Harness]:
    """A `Harness` on `backend` with page PAGE (token TOKEN) configured."""
    with migrated_url(backend, tmp_path, pg_url) as url:
        store = SqlStore.from_url(url)
        registry = PageRegistry(store.engine, TokenCipher(SECRET_KEY))
        registry.add(PAGE, TOKEN, name="Test page")
        graph = FakeGraph()
        client = GraphClient(
            create_http_client(graph.transport()), base_url=BASE_URL, app_secret=APP_SECRET
        )
        try:
            yield Harness(url, store, registry, graph, client, [])
        finally:
            store.engine.dispose()


async def run_until_idle(sender: Sender, timeout: float = 10.0) -> None:
    """Start the sender, wait until it has nothing left to do, stop it."""
    await sender.start()
    try:
        await sender.wait_idle(timeout)
    finally:
        await sender.stop()
