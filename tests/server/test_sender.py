"""The outbox sender on real databases (SQLite file; PostgreSQL with FLOW_TEST_DATABASE_URL)
against a scripted fake Graph API: bodies, order, retries, error classes, rate limits."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from outbox_kit import (
    FAST_RETRY,
    NEW_TOKEN,
    OTHER_PAGE,
    OTHER_TOKEN,
    PAGE,
    SQL_BACKENDS,
    TOKEN,
    Harness,
    harness,
    meta_error,
    proof,
    run_until_idle,
)
from sqlalchemy import event

from server.ratelimit import PageRateLimiter, TokenBucket
from server.sender import RetryPolicy, Sender


@pytest.fixture(params=SQL_BACKENDS)
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """A harness on each backend."""
    pg = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    with harness(request.param, tmp_path, pg) as found:
        yield found


def send_all(h: Harness, sender: Sender | None = None, timeout: float = 10.0) -> None:
    asyncio.run(run_until_idle(sender or h.sender(), timeout))


TEXT = {"text": "Great! I'd love to learn more about your needs."}
QUICK_REPLIES = {
    "text": "How can we reach you?",
    "quick_replies": [
        {"content_type": "user_email"},
        {"content_type": "user_phone_number"},
        {
            "content_type": "text",
            "title": "Menu",
            "payload": "MENU",
            "image_url": "https://example.com/i.png",
        },
    ],
}
BUTTONS = {
    "attachment": {
        "type": "template",
        "payload": {
            "template_type": "button",
            "text": "What next?",
            "buttons": [
                {"type": "postback", "title": "See plans", "payload": "FLOW:lead:plans"},
                {
                    "type": "web_url",
                    "title": "Website",
                    "url": "https://example.com",
                    "webview_height_ratio": "tall",
                },
                {"type": "phone_number", "title": "Call us", "payload": "+15551234567"},
            ],
        },
    }
}
GENERIC = {
    "attachment": {
        "type": "template",
        "payload": {
            "template_type": "generic",
            "elements": [
                {
                    "title": "Product 1",
                    "subtitle": "Amazing product",
                    "image_url": "https://example.com/p1.jpg",
                    "default_action": {"type": "web_url", "url": "https://example.com/p1"},
                    "buttons": [{"type": "postback", "title": "Buy now", "payload": "BUY_1"}],
                }
            ],
        },
    },
    "quick_replies": [{"content_type": "text", "title": "More", "payload": "MORE"}],
}
MEDIA = {
    "attachment": {
        "type": "image",
        "payload": {"url": "https://example.com/a.png", "is_reusable": True},
    }
}


def reply(psid: str, message: dict[str, Any], tag: str | None = None) -> dict[str, Any]:
    if tag:
        return {
            "recipient": {"id": psid},
            "messaging_type": "MESSAGE_TAG",
            "tag": tag,
            "message": message,
        }
    return {"recipient": {"id": psid}, "messaging_type": "RESPONSE", "message": message}


# ----------------------------------------------------------------------------- bodies


def test_every_kind_is_sent_in_order_with_its_exact_request(h: Harness) -> None:
    psid = "u1"
    ids = [
        h.outbound(psid, "sender_action", {"sender_action": "typing_on"}),
        h.outbound(psid, "pause", seconds=0.05),
        h.outbound(psid, "message", TEXT),
        h.outbound(psid, "message", QUICK_REPLIES),
        h.outbound(psid, "message", BUTTONS),
        h.outbound(psid, "message", GENERIC),
        h.outbound(psid, "message", MEDIA),
        h.outbound(psid, "message", {"text": "An agent here"}, tag="HUMAN_AGENT"),
        h.outbound(
            psid, "pass_thread", {"target_app_id": 263902037430900, "metadata": "Needs a human"}
        ),
        h.outbound(psid, "take_thread", {"metadata": "Bot resumes"}),
        h.outbound(psid, "take_thread", {}),
    ]
    send_all(h)
    calls = h.graph.calls
    assert [(c.method, c.path) for c in calls] == [
        ("POST", "/v25.0/me/messages"),
    ] * 7 + [
        ("POST", "/v25.0/me/pass_thread_control"),
        ("POST", "/v25.0/me/take_thread_control"),
        ("POST", "/v25.0/me/take_thread_control"),
    ]
    assert [c.json for c in calls] == [
        {"recipient": {"id": psid}, "sender_action": "typing_on"},
        reply(psid, TEXT),
        reply(psid, QUICK_REPLIES),
        reply(psid, BUTTONS),
        reply(psid, GENERIC),
        reply(psid, MEDIA),
        reply(psid, {"text": "An agent here"}, tag="HUMAN_AGENT"),
        {
            "recipient": {"id": psid},
            "target_app_id": 263902037430900,
            "metadata": "Needs a human",
        },
        {"recipient": {"id": psid}, "metadata": "Bot resumes"},
        {"recipient": {"id": psid}},
    ]
    assert all(c.params == {"appsecret_proof": proof(TOKEN)} for c in calls)
    assert all(c.token == TOKEN for c in calls)
    # The pause held the next message back (and made no call).
    assert calls[1].at - calls[0].at >= 0.05
    rows = h.rows(psid)
    assert [r.id for r in rows] == ids
    assert [r.status for r in rows] == ["sent"] * len(ids)
    # Meta's message ids, for delivery receipts; sender actions and handovers have none.
    assert [r.mid for r in rows] == [None, None, "m_1", "m_2", "m_3", "m_4", "m_5", "m_6"] + [
        None
    ] * 3
    assert all(r.sent_at is not None for r in rows)
    assert [r.sent_at for r in rows] == sorted(r.sent_at for r in rows)
    assert {r.outcome for r in h.results} == {"sent"}


def test_delivery_receipts_apply_to_sent_rows(h: Harness) -> None:
    first = h.outbound("u1", "message", TEXT)
    send_all(h)
    assert h.store.mark_delivered(PAGE, "u1", 0, mids=["m_1"]) == 1
    (row,) = h.rows("u1")
    assert (row.id, row.status) == (first, "delivered")


def test_pending_rows_are_resumed_at_start_and_new_ones_follow_notify(h: Harness) -> None:
    # Rows left pending by a previous process (e.g. it crashed mid-send).
    for i in range(3):
        h.outbound("u1", "message", {"text": f"old {i}"})
    h.outbound("u2", "message", {"text": "old u2"})

    async def scenario() -> None:
        sender = h.sender()
        await sender.start()
        await sender.wait_idle()
        h.outbound("u1", "message", {"text": "new"})
        # A processor in a worker thread notifies from there.
        thread = threading.Thread(target=sender.notify_threadsafe, args=(PAGE, "u1"))
        thread.start()
        thread.join()
        await asyncio.sleep(0.01)
        await sender.wait_idle()
        await sender.stop()

    asyncio.run(scenario())
    assert [c.json["message"]["text"] for c in h.graph.for_psid("u1")] == [
        "old 0",
        "old 1",
        "old 2",
        "new",
    ]
    assert len(h.graph.for_psid("u2")) == 1
    assert {r.status for r in h.rows("u1") + h.rows("u2")} == {"sent"}


def test_a_row_is_sent_once_even_when_notified_again_while_sending(h: Harness) -> None:
    async def scenario() -> None:
        sender = h.sender()
        await sender.start()
        for i in range(20):
            h.outbound("u1", "message", {"text": str(i)})
            sender.notify(PAGE, "u1")
            await asyncio.sleep(0.001 * (i % 3))
        await sender.wait_idle()
        sender.notify(PAGE, "u1")  # nothing new: nothing is sent again
        await asyncio.sleep(0.02)
        await sender.wait_idle()
        await sender.stop()

    asyncio.run(scenario())
    assert [c.json["message"]["text"] for c in h.graph.calls] == [str(i) for i in range(20)]


# ----------------------------------------------------------------------------- errors


def test_transient_errors_are_retried_in_order(h: Harness) -> None:
    h.graph.script(
        "u1",
        meta_error(2, status=503),
        httpx.ReadTimeout("slow"),
        httpx.Response(502, text="Bad Gateway"),
    )
    first = h.outbound("u1", "message", {"text": "first"})
    h.outbound("u1", "message", {"text": "second"})
    send_all(h)
    # The second message waited until the first was accepted.
    assert [c.json["message"]["text"] for c in h.graph.for_psid("u1")] == ["first"] * 4 + ["second"]
    rows = h.rows("u1")
    assert [(r.id, r.status, r.mid) for r in rows] == [
        (first, "sent", "m_1"),
        (first + 1, "sent", "m_2"),
    ]
    assert [(r.outcome, r.error_code) for r in h.results] == [
        ("retry", "2"),
        ("retry", "-"),
        ("retry", "-"),
        ("sent", None),
        ("sent", None),
    ]


@pytest.mark.parametrize("code", [613, 4, 17, 32, 80006])
def test_rate_limit_errors_back_off_and_slow_the_page(h: Harness, code: int) -> None:
    retry = RetryPolicy(base_delay=0.05, max_delay=0.05, max_attempts=4, jitter=0.0)
    h.graph.script("u1", meta_error(code, status=429 if code == 613 else 403))
    h.outbound("u1", "message", {"text": "first"})
    h.outbound("u2", "message", {"text": "other user"})

    async def scenario() -> None:
        sender = h.sender(retry=retry, max_in_flight=1)
        await sender.start()
        await sender.wait_idle()
        await sender.stop()

    asyncio.run(scenario())
    first, second = h.graph.for_psid("u1")
    assert second.at - first.at >= 0.05
    assert h.rows("u1")[0].status == "sent"
    # The page was paused for everyone: the other user's call came after the pause too.
    (other,) = h.graph.for_psid("u2")
    assert other.at - first.at >= 0.045
    assert h.results[0].outcome == "retry" and h.results[0].error_kind == "rate_limit"


def test_meta_retry_after_hint_is_honoured(h: Harness) -> None:
    h.graph.script("u1", meta_error(613, status=429, headers={"Retry-After": "0.2"}))
    h.outbound("u1", "message", TEXT)
    send_all(h)
    first, second = h.graph.for_psid("u1")
    assert second.at - first.at >= 0.2


def test_retries_give_up_and_record_the_last_error(h: Harness) -> None:
    h.graph.script("u1", *[meta_error(1, status=500, message="unknown")] * 4)
    h.outbound("u1", "message", {"text": "lost cause"})
    h.outbound("u1", "message", {"text": "next"})
    send_all(h)
    assert len(h.graph.for_psid("u1")) == FAST_RETRY.max_attempts + 1
    failed, sent = h.rows("u1")
    assert (failed.status, failed.error_code, failed.error_subcode) == ("failed", 1, None)
    assert failed.error_message is not None and "gave up after 4 attempts" in failed.error_message
    assert sent.status == "sent"


@pytest.mark.parametrize(
    ("code", "subcode"),
    [(551, None), (200, 1545041), (10, 2018278), (100, None), (100, 2018001)],
)
def test_permanent_errors_fail_the_row_without_retry(
    h: Harness, code: int, subcode: int | None
) -> None:
    h.graph.script("u1", meta_error(code, subcode, message=f"(#{code}) no"))
    h.outbound("u1", "message", {"text": "refused"})
    h.outbound("u1", "message", {"text": "next"})
    send_all(h)
    assert [c.json["message"]["text"] for c in h.graph.for_psid("u1")] == ["refused", "next"]
    failed, sent = h.rows("u1")
    assert (failed.status, failed.error_code, failed.error_subcode) == ("failed", code, subcode)
    assert failed.error_message == f"(#{code}) no"
    assert failed.mid is None and failed.sent_at is None
    assert sent.status == "sent"
    expected_code = f"{code}/{subcode}" if subcode else str(code)
    assert [(r.outcome, r.error_code) for r in h.results] == [
        ("failed", expected_code),
        ("sent", None),
    ]


def test_a_rejected_token_holds_the_page_until_a_new_token(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    h.graph.by_token[TOKEN] = lambda: meta_error(190, 463, message="Session has expired")
    ids = [h.outbound("u1", "message", {"text": f"hello {i}"}) for i in range(3)]
    h.outbound("u2", "message", {"text": "hello u2"})

    async def scenario() -> None:
        sender = h.sender()
        await sender.start()
        await sender.wait_idle()
        assert sender.held_pages() == [PAGE]
        page = await asyncio.to_thread(h.registry.get, PAGE)
        assert page is not None and not page.healthy
        assert page.last_error is not None and "190/463" in page.last_error
        # Nothing is lost: every row still waits.
        assert {r.status for r in h.rows("u1") + h.rows("u2")} == {"pending"}
        refused = len(h.graph.calls)
        assert refused <= 2  # one refusal per conversation at most, then nothing
        # More messages for a held page wait too, without calling Meta.
        h.outbound("u1", "message", {"text": "hello 3"})
        sender.notify(PAGE, "u1")
        await asyncio.sleep(0.05)
        await sender.wait_idle()
        assert len(h.graph.calls) == refused
        # `flowc page add` with a new token: the sender notices and resumes, in order.
        await asyncio.to_thread(h.registry.add, PAGE, NEW_TOKEN)
        deadline = time.monotonic() + 5
        while sender.held_pages() or not sender.is_idle():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await sender.stop()

    asyncio.run(scenario())
    resent = [c for c in h.graph.calls if c.token == NEW_TOKEN]
    assert [c.json["message"]["text"] for c in resent if c.psid == "u1"] == [
        "hello 0",
        "hello 1",
        "hello 2",
        "hello 3",
    ]
    assert all(c.params["appsecret_proof"] == proof(NEW_TOKEN) for c in resent)
    assert [r.status for r in h.rows("u1")] == ["sent"] * 4
    assert [r.id for r in h.rows("u1")][:3] == ids
    assert h.rows("u2")[0].status == "sent"
    page = h.registry.get(PAGE)
    assert page is not None and page.healthy and page.last_error is None
    assert "held" in {r.outcome for r in h.results}
    assert "Meta refused its token" in caplog.text
    for secret in (TOKEN, NEW_TOKEN):
        assert secret not in caplog.text


def test_an_unknown_page_waits_until_it_is_added(h: Harness) -> None:
    h.outbound("u9", "message", {"text": "for another page"}, page_id=OTHER_PAGE)

    async def scenario() -> None:
        sender = h.sender()
        await sender.start()
        await sender.wait_idle()
        assert sender.held_pages() == [OTHER_PAGE]
        assert h.graph.calls == []
        await asyncio.to_thread(h.registry.add, OTHER_PAGE, OTHER_TOKEN)
        deadline = time.monotonic() + 5
        while not h.graph.calls or not sender.is_idle():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await sender.stop()

    asyncio.run(scenario())
    assert [c.token for c in h.graph.calls] == [OTHER_TOKEN]
    assert h.rows("u9", page_id=OTHER_PAGE)[0].status == "sent"


def test_malformed_rows_fail_and_the_conversation_goes_on(h: Harness) -> None:
    h.outbound("u1", "carrier_pigeon", {"text": "?"})
    h.outbound("u1", "message", {})
    h.outbound("u1", "pass_thread", {"metadata": "no target"})
    h.outbound("u1", "message", TEXT)
    send_all(h)
    rows = h.rows("u1")
    assert [r.status for r in rows] == ["failed", "failed", "failed", "sent"]
    assert "unknown outbound kind 'carrier_pigeon'" in (rows[0].error_message or "")
    assert len(h.graph.calls) == 1


def test_a_message_id_already_logged_keeps_the_row_sent(h: Harness) -> None:
    # The echo of our own message was logged (with Meta's id) before the send was recorded.
    h.store.log_inbound(PAGE, "u1", "echo", {}, mid="m_1")
    h.outbound("u1", "message", TEXT)
    h.outbound("u1", "message", {"text": "two"})
    send_all(h)
    first, second = h.rows("u1")
    assert (first.status, first.mid) == ("sent", None)
    assert (second.status, second.mid) == ("sent", "m_2")


# ----------------------------------------------------------------------------- isolation


def test_one_users_wait_does_not_block_another(h: Harness) -> None:
    h.outbound("slow", "message", {"text": "before"})
    h.outbound("slow", "pause", seconds=30)
    h.outbound("slow", "message", {"text": "after"})
    h.graph.script("retrying", *[meta_error(2, status=503)] * 3)
    h.outbound("retrying", "message", {"text": "eventually"})
    for i in range(5):
        h.outbound("fast", "message", {"text": str(i)})

    async def scenario() -> None:
        sender = h.sender(max_in_flight=2)
        await sender.start()
        deadline = time.monotonic() + 5
        while len(h.graph.for_psid("fast")) < 5 or h.rows("retrying")[0].status != "sent":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert not sender.is_idle()  # "slow" is still pausing
        await sender.stop()

    asyncio.run(scenario())
    assert [c.json["message"]["text"] for c in h.graph.for_psid("slow")] == ["before"]
    assert [r.status for r in h.rows("slow")] == ["sent", "pending", "pending"]
    assert [r.status for r in h.rows("fast")] == ["sent"] * 5


def test_a_slow_page_does_not_starve_another_page(h: Harness) -> None:
    h.registry.add(OTHER_PAGE, OTHER_TOKEN)
    release = asyncio.Event()

    async def hang() -> None:
        await release.wait()

    h.graph.by_token[TOKEN] = lambda: hang
    for i in range(6):
        h.outbound(f"a{i}", "message", {"text": "slow page"})
    h.outbound("b1", "message", {"text": "fast page"}, page_id=OTHER_PAGE)

    async def scenario() -> None:
        sender = h.sender(max_in_flight=4, max_in_flight_per_page=2)
        await sender.start()
        deadline = time.monotonic() + 5
        while not h.graph.for_psid("b1"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        # The slow page holds only its share of the connections.
        assert len([c for c in h.graph.calls if c.token == TOKEN]) == 2
        release.set()
        await sender.wait_idle()
        await sender.stop()

    asyncio.run(scenario())
    assert h.rows("b1", page_id=OTHER_PAGE)[0].status == "sent"
    assert all(h.rows(f"a{i}")[0].status == "sent" for i in range(6))


def test_stop_leaves_in_flight_rows_pending_for_the_next_start(h: Harness) -> None:
    release = asyncio.Event()

    async def hang() -> None:
        await release.wait()

    h.graph.script("u1", hang)
    h.outbound("u1", "message", {"text": "in flight"})
    h.outbound("u1", "message", {"text": "queued"})

    async def first_run() -> None:
        sender = h.sender()
        await sender.start()
        while not h.graph.calls:
            await asyncio.sleep(0.005)
        await sender.stop()

    asyncio.run(first_run())
    assert [r.status for r in h.rows("u1")] == ["pending", "pending"]
    send_all(h)  # the next process: the in-flight message is sent again (at least once)
    assert [c.json["message"]["text"] for c in h.graph.calls] == [
        "in flight",
        "in flight",
        "queued",
    ]
    assert [r.status for r in h.rows("u1")] == ["sent", "sent"]


# ----------------------------------------------------------------------------- rate limit


def test_the_rate_limiter_bounds_a_pages_send_rate(h: Harness) -> None:
    for i in range(21):
        h.outbound(f"u{i}", "message", {"text": "hi"})
    sender = h.sender(limiter=PageRateLimiter(rate=100, burst=1))
    started = time.monotonic()
    send_all(h, sender)
    elapsed = time.monotonic() - started
    times = sorted(c.at for c in h.graph.calls)
    assert len(times) == 21
    # 21 calls at 100/s with no burst: at least 20 intervals of 10 ms.
    assert times[-1] - times[0] >= 0.19
    assert elapsed >= 0.19


def test_token_bucket_reservations() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=2, clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(4)] == pytest.approx([0, 0, 0.1, 0.2])
    now[0] = 1.0  # a quiet second refills up to the burst, not beyond
    assert [bucket.reserve() for _ in range(3)] == pytest.approx([0, 0, 0.1])
    bucket.pause(0.5)
    assert bucket.reserve() == pytest.approx(0.5)
    assert bucket.paused_for == pytest.approx(0.5)
    bucket.pause(0.1)  # a shorter pause does not cut a longer one
    assert bucket.paused_for == pytest.approx(0.5)
    with pytest.raises(ValueError):
        TokenBucket(rate=0)


def test_rate_limiter_pages_are_independent() -> None:
    now = [0.0]
    limiter = PageRateLimiter(rate=1, burst=1, clock=lambda: now[0])
    limiter.pause("a", 10)
    assert limiter.bucket("a").reserve() == pytest.approx(10)
    assert limiter.bucket("b").reserve() == 0


def test_retry_policy_backoff() -> None:
    import random

    policy = RetryPolicy(base_delay=0.5, max_delay=4, jitter=0.5)
    rng = random.Random(1)
    delays = [policy.delay(n, rng) for n in range(1, 7)]
    caps = [0.5, 1, 2, 4, 4, 4]
    assert all(cap * 0.5 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert policy.delay(1, rng, hint=30) == 30
    assert RetryPolicy(max_hint=60).delay(1, rng, hint=7200) == 60


def test_the_hook_may_fail_without_stopping_sends(h: Harness) -> None:
    def broken(_result: Any) -> None:
        raise RuntimeError("metrics down")

    h.outbound("u1", "message", TEXT)
    send_all(h, h.sender(on_result=broken))
    assert h.rows("u1")[0].status == "sent"


def test_under_load_every_row_is_sent_exactly_once_in_order(h: Harness) -> None:
    users = [f"u{i}" for i in range(40)]

    async def scenario() -> None:
        sender = h.sender()
        await sender.start()
        for round_ in range(8):
            for psid in users:
                await asyncio.to_thread(h.outbound, psid, "message", {"text": str(round_)})
                sender.notify(PAGE, psid)
            await asyncio.sleep(0)
        await sender.wait_idle()
        await sender.stop()

    asyncio.run(scenario())
    for psid in users:
        assert [c.json["message"]["text"] for c in h.graph.for_psid(psid)] == [
            str(i) for i in range(8)
        ]
    assert len(h.graph.calls) == 8 * len(users)


def test_a_load_that_raced_with_a_status_write_sends_nothing_twice(h: Harness) -> None:
    # The race: a notify makes the loader read the outbox while a row's send completes; the
    # read still sees that row pending, and returns after its conversation went idle.
    armed, queried, release = threading.Event(), threading.Event(), threading.Event()

    def slow_read(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        reads_outbox = "message_log" in statement and "pending" in statement
        if armed.is_set() and statement.lstrip().upper().startswith("SELECT") and reads_outbox:
            armed.clear()
            queried.set()
            release.wait(5)  # the rows were read; hand them over late

    event.listen(h.engine, "after_cursor_execute", slow_read)
    go = asyncio.Event()

    async def in_flight() -> None:
        await go.wait()

    h.graph.script("u1", in_flight)
    h.outbound("u1", "message", {"text": "once"})

    async def scenario() -> None:
        sender = h.sender()
        await sender.start()
        while not h.graph.calls:
            await asyncio.sleep(0.005)
        armed.set()
        sender.notify(PAGE, "u1")
        assert await asyncio.to_thread(queried.wait, 5)
        go.set()  # the send completes while the read is outstanding
        while not h.results:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)  # its status is written, the conversation is idle
        release.set()
        await sender.wait_idle()
        await sender.stop()

    asyncio.run(scenario())
    assert [c.json["message"]["text"] for c in h.graph.calls] == ["once"]
    assert h.rows("u1")[0].status == "sent"


def test_a_notify_while_a_status_write_is_slow_sends_nothing_twice(h: Harness) -> None:
    # A conversation stays active until its outcomes are committed: a load in between would
    # still see its rows as pending.
    armed, writing, release = threading.Event(), threading.Event(), threading.Event()

    def slow_write(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if armed.is_set() and statement.lstrip().startswith("UPDATE message_log"):
            armed.clear()
            writing.set()
            release.wait(5)

    event.listen(h.engine, "before_cursor_execute", slow_write)
    h.outbound("u1", "message", {"text": "once"})

    async def scenario() -> None:
        sender = h.sender()
        armed.set()
        await sender.start()
        assert await asyncio.to_thread(writing.wait, 5)
        sender.notify(PAGE, "u1")
        await asyncio.sleep(0.1)  # the loader has read the outbox meanwhile
        release.set()
        await sender.wait_idle()
        await sender.stop()

    asyncio.run(scenario())
    assert [c.json["message"]["text"] for c in h.graph.calls] == ["once"]
    assert h.rows("u1")[0].status == "sent"


def test_an_unexpected_client_failure_is_retried_like_a_transient_one(h: Harness) -> None:
    h.graph.script("u1", RuntimeError("the transport broke in a new way"))
    h.outbound("u1", "message", TEXT)
    send_all(h)
    assert len(h.graph.calls) == 2
    assert h.rows("u1")[0].status == "sent"
    assert [(r.outcome, r.error_kind) for r in h.results] == [
        ("retry", "transient"),
        ("sent", None),
    ]
