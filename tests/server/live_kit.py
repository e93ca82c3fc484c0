"""The live end-to-end harness: the real server over loopback HTTP and the emulator as its
Graph API (test_e2e.py, test_monitor.py, test_no_secrets_in_logs.py use it).

`live` serves `server.app.create_app` with uvicorn in a thread, on a SQLite file per test or a
PostgreSQL schema (FLOW_TEST_DATABASE_URL); `server_process` runs `flowc serve` as a
subprocess, for tests that must kill it. The fixtures are imported by the test modules that
use them."""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dbkit
import httpx
import pytest
from server_kit import serving
from sqlalchemy import select

from flowlang.load import compile_paths
from runtime import db, tables
from server import webhook_sender as wh
from server.app import create_app
from server.emulator import Emulator, create_emulator
from server.sender import RetryPolicy
from server.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
SECRET = "e2e-app-secret"
SECRET_KEY = "e2e-secret-key"
PAGE_ID = "1000000000000001"
TOKEN = "e2e-page-token"
PG_URL = dbkit.PG_URL
needs_pg = pytest.mark.skipif(not PG_URL, reason="FLOW_TEST_DATABASE_URL is not set")
BACKENDS = ["sqlite", pytest.param("postgresql", marks=needs_pg)]

GREAT = "Great! I'd love to learn more about your needs."
NAME_Q = "What's your name?"
EMAIL_Q = "What's your email address?"
THANKS = "Thank you for your interest! 🚀"
ADA = "ada@example.com"


def proof(token: str) -> str:
    return hmac.new(SECRET.encode(), token.encode(), hashlib.sha256).hexdigest()


def text_body(psid: str, text: str, **message: Any) -> dict[str, Any]:
    """The exact Send API body the server sends for a text reply."""
    return {
        "recipient": {"id": psid},
        "messaging_type": "RESPONSE",
        "message": {"text": text, **message},
    }


# ----------------------------------------------------------------------------- harness


class Graph:
    """The test's handle on the emulator, over its HTTP control API."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)

    def requests(
        self,
        *,
        endpoint: str | None = "/me/messages",
        psid: str | None = None,
        wait_for: int = 0,
        timeout: float = 15.0,
        since: int = 0,
    ) -> list[dict[str, Any]]:
        """Recorded calls (by default: Send API calls), waiting until `wait_for` of them."""
        params: dict[str, Any] = {"wait_for": wait_for, "timeout": timeout, "since": since}
        if endpoint is not None:
            params["endpoint"] = endpoint
        if psid is not None:
            params["psid"] = psid
        return self.http.get("/_emulator/requests", params=params).json()["requests"]

    def sent(self, psid: str, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The bodies of the successful sends to `psid`, once there are `count` of them;
        fails when there are more, or fewer after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        calls = self.requests(psid=psid)
        while True:
            ok = [c["json"] for c in calls if c["status"] == 200]
            left = deadline - time.monotonic()
            if len(ok) >= count or left <= 0:
                break
            calls = self.requests(psid=psid, wait_for=len(calls) + 1, timeout=left)
        assert len(ok) == count, f"{psid}: {len(ok)} sends, expected {count}: {ok}"
        return ok

    def fail(self, **rule: Any) -> None:
        response = self.http.post("/_emulator/fail", json=rule)
        assert response.status_code == 200, response.text

    def config(self, **settings: Any) -> None:
        assert self.http.post("/_emulator/config", json=settings).status_code == 200


@pytest.fixture
def graph() -> Iterator[Graph]:
    """A fresh emulator that checks appsecret_proof like Meta with "Require App Secret"."""
    with serving(create_emulator(Emulator(page_id=PAGE_ID, app_secret=SECRET))) as url:
        client = Graph(url)
        yield client
        client.http.close()


def pg_schema() -> AbstractContextManager[str]:
    """A new PostgreSQL schema for one test, dropped afterwards."""
    return dbkit.pg_schema("flowe2e")


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLite file by default; tests parametrized with `backend` get PostgreSQL too."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'e2e.db'}"
    else:
        with pg_schema() as url:
            yield url


@pytest.fixture(scope="module")
def program() -> Any:
    result = compile_paths([str(ROOT / "flows")])
    assert result.program is not None
    return result.program


def settings_env(db_url: str, graph_url: str, **extra: str) -> dict[str, str]:
    return {
        "FLOW_APP_SECRET": SECRET,
        "FLOW_VERIFY_TOKEN": "e2e-verify",
        "FLOW_SECRET_KEY": SECRET_KEY,
        "FLOW_PAGE_ID": PAGE_ID,
        "FLOW_PAGE_TOKEN": TOKEN,
        "FLOW_DATABASE_URL": db_url,
        "FLOW_GRAPH_API_URL": f"{graph_url}/v25.0",
        "FLOW_MAX_BODY_BYTES": str(64 * 1024),
        **extra,
    }


#: Short backoffs and page re-checks, so failure tests take tenths of seconds, not minutes.
FAST_SENDER = {
    "retry": RetryPolicy(base_delay=0.05, max_delay=0.4, max_attempts=8),
    "page_check_interval": 0.2,
}


@dataclass
class Live:
    """A running server and what a test needs to talk to it."""

    url: str
    db_url: str
    graph: Graph
    webhook: str

    def post(self, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
        raw = wh.encode(body, **kwargs)
        return httpx.post(self.webhook, content=raw, headers=wh.signed_headers(raw, SECRET))

    def say(self, psid: str, text: str, page_id: str = PAGE_ID) -> httpx.Response:
        item = wh.text_event(text, psid=psid, page_id=page_id)
        return self.post(wh.envelope(item, page_id=page_id))

    def rows(self, table: str, **where: Any) -> list[Any]:
        engine = db.create_engine_for(self.db_url)
        try:
            t = tables.metadata.tables[table]
            query = select(t).where(*(t.c[k] == v for k, v in where.items())).order_by(t.c[0])
            with engine.connect() as conn:
                return list(conn.execute(query))
        finally:
            engine.dispose()

    def rows_when(self, table: str, done: Any, timeout: float = 10.0, **where: Any) -> list[Any]:
        """The rows, once `done(rows)` holds (the server records outcomes asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows(table, **where)
            if done(rows) or time.monotonic() > deadline:
                return rows
            time.sleep(0.02)


def settled(rows: list[Any]) -> bool:
    """No message is waiting to be sent any more."""
    return bool(rows) and all(r.status != "pending" for r in rows)


@contextmanager
def live_server(
    program: Any,
    db_url: str,
    graph: Graph,
    *,
    sender: dict[str, Any] | None = None,
    graph_url: str | None = None,
) -> Iterator[Live]:
    settings = load_settings(settings_env(db_url, graph_url or graph.url))
    app = create_app(
        settings,
        flows=[str(ROOT / "flows")],
        program=program,
        sender_options={**FAST_SENDER, **(sender or {})},
    )
    with serving(app) as url:
        yield Live(url, db_url, graph, f"{url}/webhook")


@pytest.fixture
def live(program: Any, db_url: str, graph: Graph) -> Iterator[Live]:
    with live_server(program, db_url, graph) as server:
        yield server


@pytest.fixture(scope="module")
def shared(program: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One server (SQLite) for the tests about HTTP alone: signatures, bodies, verification.
    They share its database and tell their events apart by user."""
    url = f"sqlite:///{tmp_path_factory.mktemp('shared') / 'e2e.db'}"
    with serving(create_emulator(Emulator(page_id=PAGE_ID, app_secret=SECRET))) as graph_url:
        graph = Graph(graph_url)
        with live_server(program, url, graph) as server:
            yield server
        graph.http.close()


def texts(bodies: list[dict[str, Any]]) -> list[str]:
    return [b["message"]["text"] for b in bodies if "message" in b]


# ----------------------------------------------------------------------------- processes


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"the server exited during start-up:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the server did not get ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


@contextmanager
def server_process(
    env: dict[str, str], port: int, *, log_level: str = "warning", log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`flowc serve flows/` as a subprocess (so that it can be SIGKILLed). Its output goes to
    `log` (default: a temporary file), shown when it fails to start."""
    argv = [sys.executable, "-m", "flowlang", "serve", str(ROOT / "flows"), "--port", str(port)]
    argv += ["--log-level", log_level]
    with ExitStack() as stack:
        if log is None:
            log = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "serve.log"
        out = stack.enter_context(log.open("wb"))
        process = subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}", process, log)
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
