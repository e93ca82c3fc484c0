"""The HTTP surface: webhook verification and ingress, dedupe, limits, the operations
endpoints (/healthz, /readyz, /metrics) and POST /admin/reload."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from server_kit import (
    ADMIN_TOKEN,
    APP_SECRET,
    BOT_FLOW,
    PAGE_ID,
    PAGE_TOKEN,
    VERIFY_TOKEN,
    Bot,
    envelope,
    item,
    make_settings,
    signed,
    text_item,
)

from runtime import db
from server.app import create_app

# ----------------------------------------------------------------------------- verification


@pytest.fixture
def bot(start_bot: Callable[..., Bot], sqlite_url: str) -> Bot:
    return start_bot(sqlite_url)


def verify(bot: Bot, **params: str) -> httpx.Response:
    return bot.get("/webhook", params=params)


def test_verification_echoes_the_challenge_as_text(bot: Bot) -> None:
    response = verify(
        bot,
        **{
            "hub.mode": "subscribe",
            "hub.verify_token": VERIFY_TOKEN,
            "hub.challenge": "1158201444",
        },
    )
    assert response.status_code == 200
    assert response.text == "1158201444"
    assert response.headers["content-type"].startswith("text/plain")


def test_a_non_numeric_challenge_is_echoed_as_sent(bot: Bot) -> None:
    # Meta's own curl example uses CHALLENGE_ACCEPTED.
    response = verify(
        bot,
        **{
            "hub.mode": "subscribe",
            "hub.verify_token": VERIFY_TOKEN,
            "hub.challenge": "CHALLENGE_ACCEPTED",
        },
    )
    assert (response.status_code, response.text) == (200, "CHALLENGE_ACCEPTED")


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN.upper(), "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN},
    ],
)
def test_verification_is_refused_unless_everything_matches(
    bot: Bot, params: dict[str, str]
) -> None:
    response = verify(bot, **params)
    assert response.status_code == 403
    assert "1" not in response.text


def test_other_methods_are_not_allowed(bot: Bot) -> None:
    assert bot.running.request("PUT", "/webhook").status_code == 405


# ----------------------------------------------------------------------------- ingress


def test_an_event_is_stored_acknowledged_and_answered(bot: Bot) -> None:
    response = bot.post(envelope(text_item("u1", "hello")))
    assert (response.status_code, response.text) == (200, "EVENT_RECEIVED")
    bot.drain()
    (event,) = bot.events()
    assert (event.page_id, event.psid, event.kind, event.status) == (
        PAGE_ID,
        "u1",
        "message",
        "done",
    )
    assert bot.graph.texts("u1") == ["Hi Ada!"]


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[]",
        b'{"object": "instagram", "entry": []}',
        b'{"object": "page", "entry": "x"}',
        b'{"object": "page", "entry": [{"id": "1", "messaging": [3]}]}',
    ],
)
def test_a_body_that_is_not_a_messenger_payload_is_400(bot: Bot, raw: bytes) -> None:
    assert bot.post(raw).status_code == 400
    assert bot.events() == []


def test_an_oversized_body_is_413_before_anything_else(
    start_bot: Callable[..., Bot], sqlite_url: str
) -> None:
    bot = start_bot(sqlite_url, settings=make_settings(sqlite_url, max_body_bytes=2000))
    small = envelope(text_item("u1", "x" * 100))
    assert bot.post(small).status_code == 200
    big = json.dumps(envelope(text_item("u1", "x" * 3000))).encode()
    # Declared too large: refused even unsigned, without reading the body.
    headers = {"X-Hub-Signature-256": "sha256=00"}
    assert bot.running.request("POST", "/webhook", content=big, headers=headers).status_code == 413
    assert bot.post(big).status_code == 413

    # Streamed without a Content-Length: cut off once past the limit.
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 500):
            yield big[start : start + 500]

    streamed = bot.running.request("POST", "/webhook", content=chunks(), headers=signed(big))
    assert streamed.status_code == 413
    bot.drain()
    assert len(bot.events()) == 1


def test_a_body_exactly_at_the_limit_is_accepted(
    start_bot: Callable[..., Bot], sqlite_url: str
) -> None:
    raw = json.dumps(envelope(text_item("u1", "hi"))).encode()
    bot = start_bot(sqlite_url, settings=make_settings(sqlite_url, max_body_bytes=len(raw)))
    assert bot.post(raw).status_code == 200


def test_the_same_event_delivered_three_times_is_stored_once_and_answered_once(
    start_bot: Callable[..., Bot], database_url: str
) -> None:
    bot = start_bot(database_url)
    body = envelope(text_item("u1", "hello", mid="m_redelivered"))
    for time_ in (1, 2, 3):  # Meta's redeliveries differ only in entry.time
        body["entry"][0]["time"] = time_
        assert bot.post(body).status_code == 200
    bot.drain()
    assert len(bot.events()) == 1
    assert bot.graph.texts("u1") == ["Hi Ada!"]
    # Also when the copies come in one body, and after processing.
    twice = envelope(text_item("u1", "abc", mid="m_twice"), text_item("u1", "abc", mid="m_twice"))
    assert bot.post(twice).status_code == 200
    bot.drain()
    assert bot.post(twice).status_code == 200
    bot.drain()
    assert len(bot.events()) == 2
    assert bot.graph.texts("u1") == ["Hi Ada!", "got abc"]
    metrics = bot.get("/metrics").text
    assert "flow_events_duplicate_total 5.0" in metrics  # 2 + 1 + 2 copies skipped


def test_every_entry_and_item_of_a_body_is_stored(bot: Bot) -> None:
    body = {
        "object": "page",
        "entry": [
            {"id": PAGE_ID, "time": 1, "messaging": [text_item("u1", "a"), text_item("u2", "b")]},
            {"id": PAGE_ID, "time": 2, "standby": [text_item("u3", "c")]},
            {"id": PAGE_ID, "time": 3, "messaging": [item("u4", game_play={"game_id": "1"})]},
        ],
    }
    assert bot.post(body).status_code == 200
    bot.drain()
    kinds = [(e.psid, e.kind, e.status) for e in bot.events()]
    assert kinds == [
        ("u1", "message", "done"),
        ("u2", "message", "done"),
        ("u3", "standby", "ignored"),
        ("u4", "unknown", "ignored"),
    ]
    assert bot.graph.texts("u2") == ["got b"]
    assert bot.graph.sends("u3") == []


def test_a_body_without_events_is_acknowledged(bot: Bot) -> None:
    feed = {"object": "page", "entry": [{"id": PAGE_ID, "time": 1, "changes": [{"field": "feed"}]}]}
    assert bot.post(feed).status_code == 200
    assert bot.events() == []


def test_posts_before_start_up_are_refused_with_503(sqlite_url: str, flows_dir: Path) -> None:
    app = create_app(make_settings(sqlite_url), flows=[flows_dir])
    raw = json.dumps(envelope(text_item("u1", "hi"))).encode()

    async def calls() -> tuple[int, int, int]:
        transport = httpx.ASGITransport(app=app)  # no lifespan: the server never started
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            webhook = await client.post("/webhook", content=raw, headers=signed(raw))
            ready = await client.get("/readyz")
            health = await client.get("/healthz")
        return webhook.status_code, ready.status_code, health.status_code

    assert asyncio.run(calls()) == (503, 503, 200)


# ----------------------------------------------------------------------------- operations


def test_healthz_and_readyz(bot: Bot) -> None:
    assert (bot.get("/healthz").status_code, bot.get("/healthz").text) == (200, "ok")
    assert bot.get("/readyz").status_code == 200


def test_readyz_is_503_when_the_database_is_down(bot: Bot) -> None:
    server = bot.server
    working = server.engine
    server.engine = db.create_engine_for("postgresql://nobody@127.0.0.1:1/none")
    try:
        response = bot.get("/readyz")
        assert response.status_code == 503
        assert "database" in response.text
    finally:
        server.engine.dispose()
        server.engine = working
    assert bot.get("/readyz").status_code == 200


def test_metrics_are_exported(bot: Bot) -> None:
    bot.say("u1", "hello")
    bot.post(b"garbage")
    bot.drain()
    response = bot.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in (
        'flow_events_received_total{kind="message"} 1.0',
        'flow_events_processed_total{kind="message",status="done"} 1.0',
        'flow_webhook_requests_total{outcome="accepted"} 1.0',
        'flow_webhook_requests_total{outcome="malformed"} 1.0',
        'flow_sends_total{code="-",outcome="sent"} 1.0',
        'flow_queue_depth{queue="inbox"} 0.0',
        'flow_queue_depth{queue="outbox"} 0.0',
        "flow_flows_loaded 4.0",
    ):
        assert line in text, line
    for name in (
        "flow_events_failed_total",
        "flow_webhook_ack_seconds_bucket",
        "flow_event_processing_seconds_bucket",
        "flow_event_lag_seconds_bucket",
    ):
        assert name in text, name
    assert "flow_webhook_ack_seconds_count 1.0" in text


# ----------------------------------------------------------------------------- reload


def reload(bot: Bot, token: str | None = ADMIN_TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return bot.running.request("POST", "/admin/reload", headers=headers)


def test_admin_reload_needs_the_token(bot: Bot) -> None:
    assert reload(bot, None).status_code == 401
    assert reload(bot, "wrong").status_code == 401
    response = bot.running.request(
        "POST", "/admin/reload", headers={"Authorization": f"Basic {ADMIN_TOKEN}"}
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_admin_reload_is_off_without_a_token(
    start_bot: Callable[..., Bot], sqlite_url: str
) -> None:
    settings = make_settings(sqlite_url).model_copy(update={"admin_token": None})
    bot = start_bot(sqlite_url, settings=settings)
    response = reload(bot, "anything")
    assert response.status_code == 403
    assert "FLOW_ADMIN_TOKEN" in response.json()["error"]


def test_admin_reload_deploys_good_flows_and_refuses_bad_ones(bot: Bot, flows_dir: Path) -> None:
    flow_file = flows_dir / "bot.flow"
    flow_file.write_text(BOT_FLOW.replace('"got {{', '"echo: {{'), encoding="utf-8")
    response = reload(bot)
    assert response.status_code == 200, response.text
    assert list(response.json()["deployed"]) == ["echo"]
    bot.say("u2", "one")
    bot.drain()
    assert bot.graph.texts("u2") == ["echo: one"]

    flow_file.write_text(BOT_FLOW + "\nflow broken\n  step\n", encoding="utf-8")
    refused = reload(bot)
    assert refused.status_code == 400
    assert "bot.flow:" in refused.json()["diagnostics"]
    bot.say("u2", "two")
    bot.drain()
    assert bot.graph.texts("u2") == ["echo: one", "echo: two"]  # the running versions stayed
    assert 'flow_reloads_total{outcome="refused"} 1.0' in bot.get("/metrics").text


def test_watch_reloads_changed_flows(
    start_bot: Callable[..., Bot], sqlite_url: str, flows_dir: Path
) -> None:
    bot = start_bot(sqlite_url, watch=True, watch_interval=0.02)
    (flows_dir / "bot.flow").write_text(BOT_FLOW.replace('"got {{', '"new: {{'), encoding="utf-8")
    deadline = time.monotonic() + 5
    while 'flow_reloads_total{outcome="deployed"} 1.0' not in bot.get("/metrics").text:
        assert time.monotonic() < deadline, "the change was not picked up"
        time.sleep(0.02)
    bot.say("u2", "x")
    bot.drain()
    assert bot.graph.texts("u2") == ["new: x"]


# ----------------------------------------------------------------------------- flowc serve


FLOWC = "from flowlang.cli import main; main()"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flowc_serve_runs_the_app_on_uvicorn(tmp_path: Path, flows_dir: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "FLOW_APP_SECRET": APP_SECRET,
        "FLOW_VERIFY_TOKEN": VERIFY_TOKEN,
        "FLOW_SECRET_KEY": "serve-test-key",
        "FLOW_PAGE_ID": PAGE_ID,
        "FLOW_PAGE_TOKEN": PAGE_TOKEN,
        "FLOW_GRAPH_API_URL": "http://127.0.0.1:9/v25.0",
        "FLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
    }
    process = subprocess.Popen(
        [sys.executable, "-c", FLOWC, "serve", str(flows_dir), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "flowc serve did not become ready"
            time.sleep(0.05)
        # A read receipt: nothing to send, so the shutdown has nothing to wait for.
        raw = json.dumps(envelope(item("u1", read={"watermark": 1}))).encode()
        response = httpx.post(f"{base}/webhook", content=raw, headers=signed(raw))
        assert (response.status_code, response.text) == (200, "EVENT_RECEIVED")
        bad = httpx.post(f"{base}/webhook", content=raw, headers=signed(raw, "wrong"))
        assert bad.status_code == 403
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0].decode()
    assert "Serving 4 flows" in output
    assert "Traceback" not in output
