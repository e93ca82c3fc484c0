"""Helpers of the server tests: settings, a small bot, a fake Graph API, signed webhook bodies
and a running app on SQLite or PostgreSQL.

The app under test is the real one (`server.app.create_app`) with real databases: SQLite files
in tmp_path, and PostgreSQL at FLOW_TEST_DATABASE_URL in a schema of its own (skipped when the
variable is unset). Only Meta is replaced: the Graph API by an `httpx.MockTransport` that
records every request, and Meta's webhook deliveries by signed POSTs through httpx's
ASGITransport, in process (the app's ASGI lifespan runs as a server would run it)."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import dbkit
import httpx
import pytest
import uvicorn
from anyio.from_thread import BlockingPortal, start_blocking_portal
from sqlalchemy import select
from sqlalchemy.engine import Engine

from runtime import db, tables
from server.app import Server
from server.settings import Settings, load_settings
from server.signature import sign

PG_URL = dbkit.PG_URL
needs_pg = pytest.mark.skipif(not PG_URL, reason="FLOW_TEST_DATABASE_URL is not set")
BACKENDS = ["sqlite", pytest.param("postgresql", marks=needs_pg)]

APP_SECRET = "test-app-secret"
VERIFY_TOKEN = "test-verify-token"
ADMIN_TOKEN = "test-admin-token"
PAGE_ID = "1000000000000001"
PAGE_TOKEN = "test-page-token"
OUR_APP_ID = "555000111"

BOT_FLOW = """\
flow echo
  when nothing else matches
  step reply
    say "got {{ message.text }}"

flow welcome
  when user says "hello"
  when postback "GET_STARTED"
  step start
    say "Hi {{ user.first_name }}!"

flow human
  when user says "agent"
  step start
    say "Connecting you to a person."
    hand over to page inbox with note "asked for a person"

flow sale
  when referral "summer"
  step start
    say "Summer sale!"

page
  get started sends "GET_STARTED"
"""


# ----------------------------------------------------------------------------- databases


def pg_schema() -> AbstractContextManager[str]:
    """A new PostgreSQL schema for one test, dropped afterwards."""
    return dbkit.pg_schema("flowsrv")


def rows(url: str, table: str, **where: Any) -> list[Any]:
    """Rows of a table, oldest first, read straight from the database."""
    engine = db.create_engine_for(url)
    try:
        t = tables.metadata.tables[table]
        query = select(t)
        for name, value in where.items():
            query = query.where(t.c[name] == value)
        first = next(iter(t.primary_key.columns))
        with engine.connect() as conn:
            return list(conn.execute(query.order_by(first)))
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------- settings


def make_settings(database_url: str, **changes: Any) -> Settings:
    """Settings for one test: our page, our secrets, `database_url`."""
    env = {
        "FLOW_APP_SECRET": APP_SECRET,
        "FLOW_VERIFY_TOKEN": VERIFY_TOKEN,
        "FLOW_SECRET_KEY": "test-secret-key-that-is-long-enough",
        "FLOW_PAGE_ID": PAGE_ID,
        "FLOW_PAGE_TOKEN": PAGE_TOKEN,
        "FLOW_ADMIN_TOKEN": ADMIN_TOKEN,
        "FLOW_GRAPH_API_URL": "https://graph.test/v25.0",
        "FLOW_DATABASE_URL": database_url,
    }
    return load_settings(env, **changes)


# ----------------------------------------------------------------------------- fake Graph


@dataclass
class GraphCall:
    """One request the server made to the Graph API."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: Any

    @property
    def psid(self) -> str | None:
        """The user the call is about."""
        if isinstance(self.body, dict) and isinstance(self.body.get("recipient"), dict):
            return self.body["recipient"].get("id")
        if self.method == "GET":
            return self.path.rsplit("/", 1)[-1]
        return None


@dataclass
class FakeGraph:
    """Meta's Graph API on an httpx.MockTransport: records every call and answers like Meta.
    `profiles` are served by the User Profile API; `hang_profiles` makes profile calls wait
    until released (a process that stops mid-event)."""

    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[GraphCall] = field(default_factory=list)
    hang_profiles: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _mids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def transport(self) -> httpx.MockTransport:
        """A transport for `create_app(..., transport=…)`."""
        return httpx.MockTransport(self._handle)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        call = GraphCall(
            request.method,
            request.url.path.removeprefix("/v25.0"),
            dict(request.url.params),
            dict(request.headers),
            body,
        )
        with self._lock:
            self.calls.append(call)
        if request.method == "GET":
            if self.hang_profiles:
                await asyncio.sleep(3600)
            psid = call.path.rsplit("/", 1)[-1]
            profile = self.profiles.get(psid)
            if profile is None:
                error = {"message": "No profile", "type": "OAuthException", "code": 100}
                return httpx.Response(400, json={"error": {**error, "error_subcode": 2018218}})
            return httpx.Response(200, json={"id": psid, **profile})
        if call.path == "/me/messages":
            answer: dict[str, Any] = {"recipient_id": call.psid}
            if "message" in body:
                answer["message_id"] = f"m_sent_{next(self._mids)}"
            return httpx.Response(200, json=answer)
        return httpx.Response(200, json={"success": True})

    def sends(self, psid: str | None = None) -> list[dict[str, Any]]:
        """Send API bodies, in the order they were sent (optionally for one user)."""
        with self._lock:
            return [
                c.body
                for c in self.calls
                if c.path == "/me/messages" and (psid is None or c.psid == psid)
            ]

    def texts(self, psid: str) -> list[str]:
        """The texts sent to a user, in order."""
        found = []
        for body in self.sends(psid):
            message = body.get("message") or {}
            if "text" in message:
                found.append(message["text"])
            elif "attachment" in message:
                found.append(message["attachment"]["payload"].get("text", "<attachment>"))
        return found

    def profile_calls(self) -> list[GraphCall]:
        """User Profile API calls."""
        with self._lock:
            return [c for c in self.calls if c.method == "GET"]


# ----------------------------------------------------------------------------- webhooks

_mid_counter = itertools.count(1)


def new_mid() -> str:
    """A message id no other test uses."""
    return f"m_test_{uuid.uuid4().hex[:8]}_{next(_mid_counter)}"


def item(psid: str, **event: Any) -> dict[str, Any]:
    """One messaging item from user `psid` to our page."""
    return {
        "sender": {"id": psid},
        "recipient": {"id": PAGE_ID},
        "timestamp": 1_700_000_000_000,
        **event,
    }


def text_item(psid: str, text_: str, mid: str | None = None) -> dict[str, Any]:
    """A typed message."""
    return item(psid, message={"mid": mid or new_mid(), "text": text_})


def envelope(*items: dict[str, Any], page_id: str = PAGE_ID, standby: bool = False) -> dict:
    """Meta's webhook body around messaging (or standby) items."""
    channel = "standby" if standby else "messaging"
    return {"object": "page", "entry": [{"id": page_id, "time": 1, channel: list(items)}]}


def signed(body: bytes, secret: str = APP_SECRET) -> dict[str, str]:
    """Headers Meta sends with a body."""
    return {"X-Hub-Signature-256": sign(body, secret), "Content-Type": "application/json"}


# ----------------------------------------------------------------------------- the app


class LifespanFailed(Exception):
    """The app's lifespan startup failed (the message is Starlette's report)."""


class RunningApp:
    """An ASGI app running in an event loop of its own (a background thread), as uvicorn
    would run it: the lifespan protocol at start and stop, requests through httpx's
    ASGITransport. `call` runs a coroutine function in the app's loop."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._portal_cm = start_blocking_portal()
        self.portal: BlockingPortal = self._portal_cm.__enter__()
        try:
            self._to_app: asyncio.Queue[dict[str, Any]] = self.portal.call(self._queue)
            self._from_app: asyncio.Queue[dict[str, Any]] = self.portal.call(self._queue)
            self._lifespan = self.portal.start_task_soon(self._run_lifespan)
            self._expect("startup")
            self.http = self.portal.call(self._client)
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise

    @staticmethod
    async def _queue() -> asyncio.Queue[dict[str, Any]]:
        return asyncio.Queue()

    async def _client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app)
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")

    async def _run_lifespan(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        await self.app(scope, self._to_app.get, self._from_app.put)

    def _expect(self, phase: str) -> None:
        self.portal.call(self._to_app.put, {"type": f"lifespan.{phase}"})
        message = self.portal.call(self._from_app.get)
        if message["type"] != f"lifespan.{phase}.complete":
            raise LifespanFailed(message.get("message", message["type"]))

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One HTTP request to the app."""
        return self.portal.call(lambda: self.http.request(method, url, **kwargs))

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` (a coroutine function) in the app's event loop."""
        return self.portal.call(fn, *args)

    def close(self) -> None:
        """Run the lifespan shutdown and stop the loop."""
        try:
            self.portal.call(self.http.aclose)
            self._expect("shutdown")
            self._lifespan.result(timeout=30)
        finally:
            self._portal_cm.__exit__(None, None, None)


class Bot:
    """A running server app: post webhooks, wait, look at the results."""

    def __init__(self, running: RunningApp, url: str, graph: FakeGraph) -> None:
        self.running = running
        self.url = url
        self.graph = graph
        self.stopped = False

    def stop(self) -> None:
        """Stop the app (its lifespan shutdown), as a process exit would."""
        if not self.stopped:
            self.stopped = True
            self.running.close()

    @property
    def server(self) -> Server:
        """The app's `Server` (engine, dispatcher, sender, metrics …)."""
        return self.running.app.state.server

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        """GET from the app."""
        return self.running.request("GET", url, **kwargs)

    def post(self, body: dict[str, Any] | bytes, **headers: str) -> httpx.Response:
        """POST a signed webhook body."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.running.request(
            "POST", "/webhook", content=raw, headers={**signed(raw), **headers}
        )

    def say(self, psid: str, *texts: str) -> None:
        """The user types each text (one webhook each), all acknowledged."""
        for t in texts:
            response = self.post(envelope(text_item(psid, t)))
            assert response.status_code == 200, response.text

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until everything received is processed and sent."""
        self.running.call(self.server.drain, timeout)

    def events(self, **where: Any) -> list[Any]:
        """webhook_events rows."""
        return rows(self.url, "webhook_events", **where)

    def engine(self) -> Engine:
        """The app's database engine."""
        assert self.server.engine is not None
        return self.server.engine


# ----------------------------------------------------------------------------- real HTTP


@contextmanager
def serving(app: Any, sock: socket.socket | None = None) -> Iterator[str]:
    """Serve `app` with uvicorn (uvloop, httptools) in a thread on a loopback port; yields
    its base URL. The app's lifespan runs; a start-up failure fails the test."""
    if sock is None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        lifespan="auto",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive(), "the server stopped during start-up"
            assert time.monotonic() < deadline, "the server did not start in 30 s"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
