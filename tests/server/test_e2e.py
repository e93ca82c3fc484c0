"""End to end over real HTTP: signed webhooks in, the real server, Send API calls out.

The server is `server.app.create_app` served by uvicorn on a loopback port (in a thread; in a
subprocess where it must be killed), with a SQLite file per test, or a PostgreSQL schema
(FLOW_TEST_DATABASE_URL) for the storage and queue tests. Its Graph API is the emulator
(server/emulator.py) on another loopback port, which records every call and fails on demand.
Every wait is bounded; the emulator's long-poll (`wait_for`) is used instead of sleeps."""

from __future__ import annotations

import asyncio
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
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import dbkit
import httpx
import pytest
from click.testing import CliRunner
from server_kit import serving
from sqlalchemy import select

from flowlang.load import compile_paths
from runtime import db, tables
from server import webhook_sender as wh
from server.app import create_app
from server.crypto import TokenCipher
from server.emucli import say_command
from server.emulator import Emulator, create_emulator
from server.pagecli import page_group
from server.pages import PageRegistry
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


# ----------------------------------------------------------------------------- conversation


@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
def test_the_lead_generation_conversation_through_signed_webhooks(live: Live) -> None:
    psid = "2000000000000001"
    assert live.say(psid, "I'm interested in a demo").text == "EVENT_RECEIVED"
    assert live.graph.sent(psid, 2) == [text_body(psid, GREAT), text_body(psid, NAME_Q)]

    assert live.say(psid, "Ada").status_code == 200
    assert live.graph.sent(psid, 4)[2:] == [
        text_body(psid, "Nice to meet you, Ada!"),
        text_body(psid, EMAIL_Q, quick_replies=[{"content_type": "user_email"}]),
    ]
    # Tapping Messenger's email quick reply sends the address as its payload.
    tap = wh.quick_reply_event("ada@example.com", psid=psid, page_id=PAGE_ID)
    assert live.post(wh.envelope(tap, page_id=PAGE_ID)).status_code == 200
    sent = live.graph.sent(psid, 6)
    assert sent[4:] == [
        text_body(
            psid, "Perfect! Our sales team will contact you at ada@example.com within 24 hours."
        ),
        text_body(psid, THANKS),
    ]

    # Every call: the pinned version, the token in the header (never in the URL), the proof.
    # No User Profile API call: these flows never show `user.*` (see the next test).
    calls = live.graph.requests(endpoint=None, psid=psid)
    assert [c["endpoint"] for c in calls] == ["/me/messages"] * 6
    for call in calls:
        assert call["version"] == "v25.0" and call["auth"] == "header"
        assert call["query"]["appsecret_proof"] == proof(TOKEN)
        assert "access_token" not in call["query"]

    # The durable outbox recorded each message as sent, with the id Meta answered.
    out = live.rows_when("message_log", settled, psid=psid, direction="outbound")
    assert [r.status for r in out] == ["sent"] * 6
    assert [r.mid for r in out] == [c["response"]["message_id"] for c in calls]
    events = live.rows("webhook_events", psid=psid)
    assert [e.status for e in events] == ["done"] * 3  # done before its replies were sent


def test_get_started_and_the_profile_name(live: Live) -> None:
    psid = "2000000000000002"
    live.graph.http.post("/_emulator/profiles", json={psid: {"first_name": "Zoë"}})
    started = wh.get_started_event(psid=psid, page_id=PAGE_ID)
    assert live.post(wh.envelope(started, page_id=PAGE_ID)).status_code == 200
    hello, typing, question = live.graph.sent(psid, 3)
    assert hello == text_body(psid, "Hello Zoë!")
    # The welcome shows `user.first_name`: the profile was fetched first, with its proof.
    (profile,) = live.graph.requests(endpoint=f"/{psid}")
    assert set(profile["query"]["fields"].split(",")) >= {"first_name", "last_name"}
    assert profile["query"]["appsecret_proof"] == proof(TOKEN)
    assert typing == {"recipient": {"id": psid}, "sender_action": "typing_on"}
    assert question["message"]["text"] == "What brings you here today?"
    replies = question["message"]["quick_replies"]
    assert [r["title"] for r in replies] == [
        "See what we offer",
        "Pricing and demos",
        "I need help",
    ]
    # `typing for 1 second`: the question came a second after the typing indicator.
    calls = live.graph.requests(psid=psid)
    assert calls[2]["time"] - calls[1]["time"] >= 0.9


def test_flowc_say_talks_to_the_server_and_shows_the_replies(live: Live) -> None:
    result = CliRunner().invoke(
        say_command,
        [
            "I'm interested in a demo",
            "--url",
            live.webhook,
            "--app-secret",
            SECRET,
            "--page-id",
            PAGE_ID,
            "--psid",
            "2000000000000003",
            "--emulator",
            live.graph.url,
            "--wait",
            "0.5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "→ EVENT_RECEIVED" in result.output
    assert f"bot → 2000000000000003: {GREAT}\nbot → 2000000000000003: {NAME_Q}" in result.output


def test_webhook_verification_echoes_the_challenge(shared: Live) -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": "e2e-verify", "hub.challenge": "CH-1"}
    ok = httpx.get(shared.webhook, params=query)
    assert ok.status_code == 200 and ok.text == "CH-1"
    wrong = httpx.get(shared.webhook, params={**query, "hub.verify_token": "nope"})
    assert wrong.status_code == 403


# ----------------------------------------------------------------------------- signatures


def test_missing_wrong_and_sha1_only_signatures_are_refused(shared: Live) -> None:
    body = wh.envelope(wh.text_event("pricing", psid="3000", page_id=PAGE_ID), page_id=PAGE_ID)
    raw = wh.encode(body)
    sha1 = "sha1=" + hmac.new(SECRET.encode(), raw, hashlib.sha1).hexdigest()
    other = wh.signature(raw, "not-the-app-secret")
    cases = {
        "missing": {"content-type": "application/json"},
        "wrong": {"x-hub-signature-256": other},
        "sha1 only": {"x-hub-signature": sha1},
        "sha1 in the sha256 header": {"x-hub-signature-256": sha1},
        "another body's": {"x-hub-signature-256": wh.signature(raw + b" ", SECRET)},
    }
    for case, headers in cases.items():
        response = httpx.post(shared.webhook, content=raw, headers=headers)
        assert response.status_code == 403, case
    assert shared.rows("webhook_events", psid="3000") == []
    # The same bytes, correctly signed, are accepted: the refusals were about the signature.
    assert httpx.post(
        shared.webhook, content=raw, headers=wh.signed_headers(raw, SECRET)
    ).is_success
    assert texts(shared.graph.sent("3000", 2)) == [GREAT, NAME_Q]


def test_non_ascii_bodies_are_verified_over_their_raw_bytes(shared: Live) -> None:
    for psid, escape in (("3001", True), ("3002", False)):
        assert shared.say(psid, "pricing").status_code == 200
        shared.graph.sent(psid, 2)
        name = wh.envelope(wh.text_event("Zoë 🚀", psid=psid, page_id=PAGE_ID), page_id=PAGE_ID)
        raw = wh.encode(name, escape=escape)
        assert raw.isascii() is escape  # Meta's \u escapes, or plain UTF-8 bytes
        response = httpx.post(shared.webhook, content=raw, headers=wh.signed_headers(raw, SECRET))
        assert response.status_code == 200
        assert texts(shared.graph.sent(psid, 4))[2] == "Nice to meet you, Zoë 🚀!"
    # Signed over the escaped form but sent as UTF-8: a server hashing re-serialized JSON
    # would accept this; one hashing the raw bytes must not.
    body = wh.envelope(wh.text_event("Grüße", psid="3003", page_id=PAGE_ID), page_id=PAGE_ID)
    headers = wh.signed_headers(wh.encode(body), SECRET)
    refused = httpx.post(shared.webhook, content=wh.encode(body, escape=False), headers=headers)
    assert refused.status_code == 403


def test_a_body_arriving_in_small_chunks_is_read_whole(shared: Live) -> None:
    body = wh.envelope(wh.text_event("pricing", psid="3004", page_id=PAGE_ID), page_id=PAGE_ID)
    raw = wh.encode(body)

    def chunks() -> Iterator[bytes]:  # chunked transfer encoding, 7 bytes at a time
        for i in range(0, len(raw), 7):
            yield raw[i : i + 7]

    response = httpx.post(shared.webhook, content=chunks(), headers=wh.signed_headers(raw, SECRET))
    assert response.status_code == 200
    assert texts(shared.graph.sent("3004", 2)) == [GREAT, NAME_Q]


# ----------------------------------------------------------------------------- bad bodies


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'{"object": "instagram", "entry": []}',
        b'{"object": "page"}',
        b'{"object": "page", "entry": {"id": "1"}}',
        b'{"object": "page", "entry": [42]}',
        b"\xff\xfe",
    ],
    ids=["text", "array", "instagram", "no entry", "entry object", "entry item", "bytes"],
)
def test_malformed_bodies_are_refused_with_400(shared: Live, raw: bytes) -> None:
    stored = len(shared.rows("webhook_events"))
    response = httpx.post(shared.webhook, content=raw, headers=wh.signed_headers(raw, SECRET))
    assert response.status_code == 400
    assert len(shared.rows("webhook_events")) == stored


def test_oversized_bodies_are_refused_with_413(shared: Live) -> None:
    item = wh.text_event("x" * (70 * 1024), psid="3100", page_id=PAGE_ID)
    raw = wh.encode(wh.envelope(item, page_id=PAGE_ID))
    headers = wh.signed_headers(raw, SECRET)
    assert httpx.post(shared.webhook, content=raw, headers=headers).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        for i in range(0, len(raw), 8192):
            yield raw[i : i + 8192]

    response = httpx.post(shared.webhook, content=chunks(), headers=headers)
    assert response.status_code == 413
    assert shared.rows("webhook_events", psid="3100") == []


# ----------------------------------------------------------------------------- redelivery


@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
def test_an_event_delivered_three_times_is_answered_once(live: Live) -> None:
    psid = "4000"
    first = wh.envelope(wh.text_event("pricing", psid=psid, page_id=PAGE_ID), page_id=PAGE_ID)
    for _ in range(3):  # one after another, as Meta retries
        assert live.post(first).status_code == 200

    async def three_at_once(body: dict[str, Any]) -> list[int]:
        raw = wh.encode(body)
        async with httpx.AsyncClient() as client:
            answers = await asyncio.gather(
                *(
                    client.post(live.webhook, content=raw, headers=wh.signed_headers(raw, SECRET))
                    for _ in range(3)
                )
            )
        return [a.status_code for a in answers]

    second = wh.envelope(wh.text_event("Ada", psid=psid, page_id=PAGE_ID), page_id=PAGE_ID)
    assert asyncio.run(three_at_once(second)) == [200, 200, 200]
    # A third message after the duplicates: had a duplicate been processed, its answers (or
    # "Nice to meet you, pricing!") would come before this one's, which are processed in order.
    assert live.say(psid, "ada@example.com").status_code == 200
    assert texts(live.graph.sent(psid, 6)) == [
        GREAT,
        NAME_Q,
        "Nice to meet you, Ada!",
        EMAIL_Q,
        "Perfect! Our sales team will contact you at ada@example.com within 24 hours.",
        THANKS,
    ]
    assert len(live.rows("webhook_events", psid=psid)) == 3


# ----------------------------------------------------------------------------- Graph failures


@pytest.mark.parametrize(
    "rule",
    [{"code": 2}, {"code": 1200}, {"code": None, "http_status": 502}],
    ids=["code 2", "code 1200", "bare 502"],
)
def test_transient_errors_are_retried_and_delivered_in_order(
    live: Live, rule: dict[str, Any]
) -> None:
    psid = "5000"
    live.graph.fail(**rule, psid=psid, times=3)
    assert live.say(psid, "pricing").status_code == 200
    assert texts(live.graph.sent(psid, 2)) == [GREAT, NAME_Q]
    calls = live.graph.requests(psid=psid)
    assert [c["failed"] for c in calls] == [True, True, True, False, False]
    assert all(c["json"] == calls[0]["json"] for c in calls[:4])  # the same message, retried
    out = live.rows_when("message_log", settled, psid=psid, direction="outbound")
    assert [r.status for r in out] == ["sent", "sent"]


def test_rate_limit_errors_deliver_later_in_order(live: Live) -> None:
    psid = "5100"
    live.graph.fail(code=613, psid=psid, times=2)
    started = time.monotonic()
    assert live.say(psid, "pricing").status_code == 200
    assert live.say(psid, "Ada").status_code == 200
    assert texts(live.graph.sent(psid, 4)) == [GREAT, NAME_Q, "Nice to meet you, Ada!", EMAIL_Q]
    calls = live.graph.requests(psid=psid)
    assert [c["status"] for c in calls] == [429, 429, 200, 200, 200, 200]
    # Backed off: the successful send came after at least one backoff delay.
    first_ok = calls[2]["time"] - calls[0]["time"]
    assert first_ok >= FAST_SENDER["retry"].base_delay * 0.5
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
def test_a_refused_token_holds_the_page_until_a_new_token_loses_nothing(
    program: Any, db_url: str, graph: Graph
) -> None:
    graph.config(valid_tokens=["fresh-token"])  # the server starts with an expired one
    with live_server(program, db_url, graph) as live:
        psid = "5200"
        assert live.say(psid, "pricing").status_code == 200
        refused = graph.requests(psid=psid, wait_for=1)
        assert refused[0]["response"]["error"]["code"] == 190
        deadline = time.monotonic() + 10
        while live.rows("pages")[0].healthy:
            assert time.monotonic() < deadline, "the page was not marked unhealthy"
            time.sleep(0.05)
        page = live.rows("pages")[0]
        assert "190" in page.last_error and TOKEN not in page.last_error
        time.sleep(0.5)  # held, not retried in a loop
        assert len(graph.requests(psid=psid)) == 1
        assert live.say(psid, "Ada").status_code == 200
        pending = live.rows("message_log", psid=psid, direction="outbound")
        deadline = time.monotonic() + 10
        while len(pending) < 4:  # the second event is processed; its replies wait too
            assert time.monotonic() < deadline
            pending = live.rows("message_log", psid=psid, direction="outbound")
        assert [r.status for r in pending] == ["pending"] * 4

        added = CliRunner().invoke(
            page_group,
            ["add", "--page-id", PAGE_ID, "--token", "fresh-token"],
            env={"FLOW_DATABASE_URL": db_url, "FLOW_SECRET_KEY": SECRET_KEY},
        )
        assert added.exit_code == 0, added.output
        assert "fresh-token" not in added.output
        sent = graph.sent(psid, 4)
        assert texts(sent) == [GREAT, NAME_Q, "Nice to meet you, Ada!", EMAIL_Q]
        ok = [c for c in graph.requests(psid=psid) if c["status"] == 200]
        assert all(c["query"]["appsecret_proof"] == proof("fresh-token") for c in ok)
        assert live.rows("pages")[0].healthy


@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
@pytest.mark.parametrize(("code", "subcode"), [(551, None), (200, 1545041), (10, 2018278)], ids=str)
def test_an_unreachable_user_is_recorded_on_the_message_not_retried(
    live: Live, code: int, subcode: int | None
) -> None:
    gone, fine = "5300", "5301"
    live.graph.fail(code=code, subcode=subcode, psid=gone)
    assert live.say(gone, "pricing").status_code == 200
    assert live.say(fine, "pricing").status_code == 200
    assert texts(live.graph.sent(fine, 2)) == [GREAT, NAME_Q]  # other users are not held up
    live.graph.requests(psid=gone, wait_for=2)
    out = live.rows_when("message_log", settled, psid=gone, direction="outbound")
    assert [(r.status, r.error_code, r.error_subcode) for r in out] == [
        ("failed", code, subcode)
    ] * 2
    assert all(r.error_message for r in out)
    time.sleep(0.3)
    calls = live.graph.requests(psid=gone)
    assert len(calls) == 2  # one attempt per message: no retry
    assert [c["json"]["message"]["text"] for c in calls] == [GREAT, NAME_Q]


def test_an_unreachable_graph_api_is_retried_until_it_answers(program: Any, db_url: str) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # reserved, not listening yet: connections are refused
    graph_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    placeholder = Graph(graph_url)
    with live_server(program, db_url, placeholder, graph_url=graph_url) as live:
        assert live.say("5400", "pricing").status_code == 200
        time.sleep(0.4)  # a few refused connections
        emulator = create_emulator(Emulator(page_id=PAGE_ID, app_secret=SECRET))
        with serving(emulator, sock):
            assert texts(placeholder.sent("5400", 2)) == [GREAT, NAME_Q]
    placeholder.http.close()


# ----------------------------------------------------------------------------- processes


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
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
def server_process(env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`flowc serve flows/` as a subprocess (so that it can be SIGKILLed). Its output goes to
    a file, shown when it fails to start."""
    argv = [sys.executable, "-m", "flowlang", "serve", str(ROOT / "flows"), "--port", str(port)]
    argv += ["--log-level", "warning"]
    with tempfile.NamedTemporaryFile("w+b", suffix=".log") as out:
        process = subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            _wait_ready(f"http://127.0.0.1:{port}", process, Path(out.name))
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------- concurrency


PAGES = [f"10000000000001{i:02d}" for i in range(8)]


@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
def test_200_users_times_5_messages_concurrently_keep_each_users_order(
    db_url: str, graph: Graph
) -> None:
    users = 200
    db.upgrade(db_url)
    engine = db.create_engine_for(db_url)
    registry = PageRegistry(engine, TokenCipher(SECRET_KEY))
    for page in PAGES:  # 8 pages, each with its own token: 25 users on each
        registry.add(page, f"token-{page}")
    engine.dispose()

    def inputs(i: int) -> list[str]:
        return ["I'm interested in a demo", f"User {i}", f"user{i}@example.com", "pricing", "Bo"]

    def expected(i: int) -> list[str]:
        return [
            GREAT,
            NAME_Q,
            f"Nice to meet you, User {i}!",
            EMAIL_Q,
            f"Perfect! Our sales team will contact you at user{i}@example.com within 24 hours.",
            THANKS,
            GREAT,
            NAME_Q,
            "Nice to meet you, Bo!",
            EMAIL_Q,
        ]

    async def user(session: aiohttp.ClientSession, url: str, i: int) -> None:
        page = PAGES[i % len(PAGES)]
        for line in inputs(i):  # each message after the previous one was acknowledged
            raw = wh.encode(
                wh.envelope(wh.text_event(line, psid=f"u{i}", page_id=page), page_id=page)
            )
            async with session.post(url, data=raw, headers=wh.signed_headers(raw, SECRET)) as r:
                assert r.status == 200

    async def everyone(url: str) -> float:
        # aiohttp, not httpx: httpx's pool manages ~100 requests/s at this concurrency, which
        # would make this a test of the test's client.
        connector = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(connector=connector) as session:
            started = time.monotonic()
            await asyncio.gather(*(user(session, url, i) for i in range(users)))
            return time.monotonic() - started

    # The server runs in a process of its own: the test's 200 clients and the emulator do
    # not share its interpreter (and its GIL).
    port = _free_port()
    with server_process(settings_env(db_url, graph.url), port):
        acked_in = asyncio.run(everyone(f"http://127.0.0.1:{port}/webhook"))
        total = users * 10
        calls = graph.requests(wait_for=total, timeout=40)
        assert len(calls) == total, f"{len(calls)} of {total} sends arrived"
    by_user: dict[str, list[dict[str, Any]]] = {}
    for call in calls:
        by_user.setdefault(call["psid"], []).append(call)
    for i in range(users):
        mine = by_user[f"u{i}"]
        assert texts([c["json"] for c in mine]) == expected(i), f"user {i}"
        page = PAGES[i % len(PAGES)]
        assert {c["query"]["appsecret_proof"] for c in mine} == {proof(f"token-{page}")}
    assert acked_in < 30


# ----------------------------------------------------------------------------- crash


@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
def test_an_event_acked_before_a_crash_is_processed_after_the_restart(
    db_url: str, graph: Graph
) -> None:
    env = settings_env(db_url, graph.url)
    port = _free_port()
    webhook = f"http://127.0.0.1:{port}/webhook"
    psid = "6000"
    body = wh.envelope(wh.text_event("pricing", psid=psid, page_id=PAGE_ID), page_id=PAGE_ID)
    raw = wh.encode(body)
    # The Graph API hangs, so the server is stuck fetching the user's profile: the event is
    # stored and acknowledged, but not processed, when the process is killed.
    graph.config(latency=30)
    with server_process(env, port) as process:
        response = httpx.post(webhook, content=raw, headers=wh.signed_headers(raw, SECRET))
        assert response.status_code == 200
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    live = Live(f"http://127.0.0.1:{port}", db_url, graph, webhook)
    assert [e.status for e in live.rows("webhook_events")] == ["pending"]
    assert live.rows("message_log") == []
    graph.config(latency=0)

    with server_process(env, port):
        assert texts(graph.sent(psid, 2)) == [GREAT, NAME_Q]
        assert [e.status for e in live.rows("webhook_events")] == ["done"]
        # The conversation carries on from the recovered event.
        assert live.say(psid, "Ada").status_code == 200
        assert texts(graph.sent(psid, 4))[2:] == ["Nice to meet you, Ada!", EMAIL_Q]
