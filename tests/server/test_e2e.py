"""End to end over real HTTP: signed webhooks in, the real server, Send API calls out.

The server is `server.app.create_app` served by uvicorn on a loopback port (in a thread; in a
subprocess where it must be killed), with a SQLite file per test, or a PostgreSQL schema
(FLOW_TEST_DATABASE_URL) for the storage and queue tests. Its Graph API is the emulator
(server/emulator.py) on another loopback port, which records every call and fails on demand.
Every wait is bounded; the emulator's long-poll (`wait_for`) is used instead of sleeps. The
harness (fixtures, the emulator client, `flowc serve` subprocesses) is in live_kit.py."""

# The fixtures imported from live_kit are test parameters, which pyflakes calls redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import hashlib
import hmac
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import pytest
from click.testing import CliRunner
from live_kit import (  # noqa: F401 (fixtures)
    BACKENDS,
    EMAIL_Q,
    FAST_SENDER,
    GREAT,
    NAME_Q,
    PAGE_ID,
    SECRET,
    SECRET_KEY,
    THANKS,
    TOKEN,
    Graph,
    Live,
    db_url,
    free_port,
    graph,
    live,
    live_server,
    program,
    proof,
    server_process,
    settings_env,
    settled,
    shared,
    text_body,
    texts,
)
from server_kit import serving

from runtime import db
from server import webhook_sender as wh
from server.crypto import TokenCipher
from server.emucli import say_command
from server.emulator import Emulator, create_emulator
from server.pagecli import page_group
from server.pages import PageRegistry

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
    port = free_port()
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
    port = free_port()
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
