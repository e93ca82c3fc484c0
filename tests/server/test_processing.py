"""After the ack: the inbox, ordered processing, crash recovery, every kind of event's effect
(handover, receipts, echoes, standby, unknown pages), profiles, and failures.

Storage and queue behaviour runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx
from server_kit import (
    OUR_APP_ID,
    PAGE_ID,
    Bot,
    envelope,
    item,
    make_settings,
    new_mid,
    rows,
    signed,
    text_item,
)
from sqlalchemy import Connection, text

from flowlang.ir import PAGE_INBOX_APP_ID
from runtime import db, tables
from server import processor as processor_module
from server.dispatcher import Dispatcher
from server.inbox import Inbox, IngressWriter, StoredEvent, write_lock
from server.messenger import WebhookEvent, parse_body
from server.processor import GroupCommit

# ----------------------------------------------------------------------------- the inbox


def events_of(*items: dict[str, Any]) -> list[WebhookEvent]:
    return parse_body(json.dumps(envelope(*items)).encode())


def test_inbox_stores_new_events_once_in_order(database_url: str) -> None:
    engine = db.create_engine_for(database_url)
    try:
        inbox = Inbox(engine)
        first = events_of(text_item("u1", "a\u00e9 %s ?", "m_a"), text_item("u2", "b", "m_b"))
        stored = inbox.add(first)
        assert [(e.psid, e.key) for e in stored] == [("u1", "mid:m_a"), ("u2", "mid:m_b")]
        assert stored[0].id < stored[1].id
        again = inbox.add(events_of(text_item("u1", "a", "m_a"), text_item("u1", "c", "m_c")))
        assert [e.key for e in again] == ["mid:m_c"]
        loaded = inbox.pending()
        assert [e.key for e in loaded] == ["mid:m_a", "mid:m_b", "mid:m_c"]
        # What the ingress wrote reads back the same through SQLAlchemy.
        assert loaded[0].payload == first[0].payload
        assert loaded[0].received_at == stored[0].received_at
        assert loaded[0].received_at.tzinfo is not None
        assert [e.key for e in inbox.pending(after=stored[1].id)] == ["mid:m_c"]
        # An outcome is recorded once: a second claim finds the event handled.
        assert inbox.finish(stored[0].id, "done")
        assert not inbox.finish(stored[0].id, "failed")
        assert inbox.status(stored[0].id) == ("done", 1, None)
        inbox.record_attempt(stored[1].id, 2, "boom")
        assert inbox.status(stored[1].id) == ("pending", 2, "boom")
        assert [e.attempts for e in inbox.pending()] == [2, 0]
        assert inbox.counts() == {"done": 1, "pending": 2}
        assert [e.key for e in inbox.all_pending(batch=1)] == ["mid:m_b", "mid:m_c"]
    finally:
        engine.dispose()


def test_ingress_writer_commits_concurrent_requests_together(database_url: str) -> None:
    engine = db.create_engine_for(database_url)
    stored: list[StoredEvent] = []

    async def run() -> list[list[StoredEvent] | BaseException]:
        writer = IngressWriter(Inbox(engine), on_stored=stored.extend)
        writer.start()
        try:
            bad = WebhookEvent(PAGE_ID, "u9", "message", "mid:bad", {"not json": {1, 2}})
            requests = [events_of(text_item(f"u{n}", "x", f"m_{n}")) for n in range(40)]
            requests.insert(20, [bad])
            requests.append(events_of(text_item("u0", "x", "m_0")))  # a redelivery
            return await asyncio.gather(
                *(writer.add(events) for events in requests), return_exceptions=True
            )
        finally:
            writer.stop()

    try:
        outcomes = asyncio.run(run())
    finally:
        engine.dispose()
    # One request's unstorable event fails that request only.
    assert isinstance(outcomes[20], Exception)
    good = [o for i, o in enumerate(outcomes) if i != 20]
    assert all(isinstance(o, list) for o in good)
    assert [len(o) for o in good] == [1] * 40 + [0]  # type: ignore[arg-type]
    assert sorted(e.key for e in stored) == sorted(f"mid:m_{n}" for n in range(40))
    assert [e.id for e in stored] == sorted(e.id for e in stored)
    assert len(rows(database_url, "webhook_events")) == 40


def test_write_lock_is_per_sqlite_file_and_absent_for_postgres(database_url: str) -> None:
    engine = db.create_engine_for(database_url)
    other = db.create_engine_for(database_url)
    try:
        if engine.dialect.name == "sqlite":
            assert write_lock(engine) is write_lock(other)
        else:
            with write_lock(engine), write_lock(other):
                pass  # no lock: both enter
    finally:
        engine.dispose()
        other.dispose()


def test_group_commit_shares_commits_and_isolates_a_failing_job(database_url: str) -> None:
    engine = db.create_engine_for(database_url)
    conflicts = {"left": 1}

    def insert(page_id: str, conn: Connection) -> str:
        conn.execute(
            tables.pages.insert().values(
                page_id=page_id,
                token_encrypted="x",
                healthy=True,
                updated_at=datetime.now(UTC),
            )
        )
        if page_id == "bad":
            raise ValueError("this job breaks after writing")
        if page_id == "busy" and conflicts["left"]:
            conflicts["left"] -= 1
            raise processor_module._Conflict  # someone else saved: run it again
        return page_id

    async def run() -> list[Any]:
        commit = GroupCommit(engine, max_batch=8)
        commit.start()
        try:
            names = [f"p{n}" for n in range(10)] + ["bad", "busy"]
            return await asyncio.gather(
                *(commit.run(partial(insert, name)) for name in names), return_exceptions=True
            )
        finally:
            commit.stop()

    try:
        outcomes = asyncio.run(run())
    finally:
        engine.dispose()
    assert outcomes[:10] == [f"p{n}" for n in range(10)]
    assert isinstance(outcomes[10], ValueError)
    assert outcomes[11] == "busy"
    stored = sorted(r.page_id for r in rows(database_url, "pages"))
    assert stored == sorted([f"p{n}" for n in range(10)] + ["busy"])  # "bad" rolled back


# ----------------------------------------------------------------------------- the dispatcher


def stored_event(n: int, psid: str) -> StoredEvent:
    return StoredEvent(n, PAGE_ID, psid, "message", f"k{n}", {}, datetime.now(UTC))


def test_dispatcher_keeps_each_conversation_in_order_and_runs_them_in_parallel() -> None:
    seen: dict[str, list[int]] = {}
    running = 0
    most = 0

    async def handler(event: StoredEvent) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001 * (event.id % 3))
        seen.setdefault(event.psid or "", []).append(event.id)
        running -= 1

    async def run() -> None:
        dispatcher = Dispatcher(handler, concurrency=4)
        dispatcher.start()
        dispatcher.submit(stored_event(n, f"u{n % 7}") for n in range(1, 141))
        dispatcher.submit([stored_event(1, "u1")])  # queued already: not twice
        assert await dispatcher.drain(10)
        await dispatcher.stop()

    asyncio.run(run())
    assert seen == {f"u{k}": [n for n in range(1, 141) if n % 7 == k] for k in range(7)}
    assert most == 4  # parallel, and bounded


def test_dispatcher_retries_then_gives_up_and_the_conversation_goes_on() -> None:
    attempts: dict[int, int] = {}
    failures: list[tuple[int, int, bool]] = []
    handled: list[int] = []

    async def handler(event: StoredEvent) -> None:
        attempts[event.id] = attempts.get(event.id, 0) + 1
        if event.id == 1 or (event.id == 2 and attempts[2] < 3):
            raise RuntimeError(f"event {event.id} broke")
        handled.append(event.id)

    async def on_failure(
        event: StoredEvent, attempt: int, error: BaseException, final: bool
    ) -> None:
        failures.append((event.id, attempt, final))

    async def run() -> None:
        dispatcher = Dispatcher(
            handler, on_failure=on_failure, max_attempts=3, backoff=0.001, max_backoff=0.002
        )
        dispatcher.start()
        dispatcher.submit([stored_event(1, "u1"), stored_event(2, "u1"), stored_event(3, "u1")])
        assert await dispatcher.drain(5)
        await dispatcher.stop()

    asyncio.run(run())
    assert attempts == {1: 3, 2: 3, 3: 1}
    assert failures == [(1, 1, False), (1, 2, False), (1, 3, True), (2, 1, False), (2, 2, False)]
    assert handled == [2, 3]


def test_dispatcher_keeps_retrying_when_the_failure_cannot_be_recorded() -> None:
    attempts = 0

    async def handler(event: StoredEvent) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 5:
            raise RuntimeError("database down")

    async def on_failure(
        event: StoredEvent, attempt: int, error: BaseException, final: bool
    ) -> None:
        raise RuntimeError("database still down")

    async def run() -> None:
        dispatcher = Dispatcher(
            handler, on_failure=on_failure, max_attempts=2, backoff=0.001, max_backoff=0.002
        )
        dispatcher.start()
        dispatcher.submit([stored_event(1, "u1")])
        assert await dispatcher.drain(5)
        await dispatcher.stop()

    asyncio.run(run())
    assert attempts == 5  # past max_attempts: an event is never lost unrecorded


def test_dispatcher_stop_leaves_queued_events_alone() -> None:
    started: list[int] = []
    release = asyncio.Event()

    async def handler(event: StoredEvent) -> None:
        started.append(event.id)
        await release.wait()

    async def run() -> bool:
        dispatcher = Dispatcher(handler, concurrency=1)
        dispatcher.start()
        dispatcher.submit([stored_event(1, "u1"), stored_event(2, "u1")])
        await asyncio.sleep(0.01)
        await dispatcher.stop(timeout=0.05)
        return await dispatcher.drain(0.01)

    assert asyncio.run(run()) is False
    assert started == [1]


# ----------------------------------------------------------------------------- ordering


def post_concurrently(bot: Bot, per_user: dict[str, list[dict[str, Any]]]) -> None:
    """Every user posts their bodies one after another, all users at the same time."""

    async def user(bodies: list[dict[str, Any]]) -> None:
        for body in bodies:
            raw = json.dumps(body).encode()
            response = await bot.running.http.post("/webhook", content=raw, headers=signed(raw))
            assert response.status_code == 200

    async def everyone() -> None:
        await asyncio.gather(*(user(bodies) for bodies in per_user.values()))

    bot.running.call(everyone)


def test_each_conversation_is_answered_in_order(
    start_bot: Callable[..., Bot], database_url: str
) -> None:
    bot = start_bot(database_url)
    users = [f"u{n}" for n in range(8)]
    per_user = {u: [envelope(text_item(u, str(i))) for i in range(10)] for u in users}
    post_concurrently(bot, per_user)
    # Bodies carrying several users' events, interleaved.
    bot.post(envelope(*(text_item(u, "10") for u in users)))
    bot.post(envelope(*(text_item(u, "11") for u in reversed(users))))
    bot.drain()
    for u in users:
        assert bot.graph.texts(u) == [f"got {i}" for i in range(12)], u
    inbound = rows(database_url, "message_log", direction="inbound", psid="u3")
    assert [r.body["text"] for r in inbound] == [str(i) for i in range(12)]
    assert {e.status for e in bot.events()} == {"done"}


# ----------------------------------------------------------------------------- crash recovery


def test_events_acknowledged_before_a_crash_are_processed_after_the_restart(
    start_bot: Callable[..., Bot], database_url: str
) -> None:
    bot = start_bot(database_url, shutdown_grace=0.05)
    bot.graph.hang_profiles = True  # the first event stalls mid-processing
    bot.say("u1", "hello", "first")
    bot.say("u2", "second")
    deadline = time.monotonic() + 5
    while len(bot.graph.profile_calls()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    bot.stop()  # the process goes away with every event acknowledged, none answered
    assert [e.status for e in rows(database_url, "webhook_events")] == ["pending"] * 3
    assert bot.graph.sends() == []

    bot.graph.hang_profiles = False
    again = start_bot(database_url)
    again.drain()
    assert again.graph.texts("u1") == ["Hi Ada!", "got first"]
    assert again.graph.texts("u2") == ["got second"]
    assert {e.status for e in again.events()} == {"done"}


# ----------------------------------------------------------------------------- kinds


def test_unknown_page_is_stored_not_processed(
    start_bot: Callable[..., Bot], database_url: str
) -> None:
    bot = start_bot(database_url)
    stranger = item("u1", message={"mid": new_mid(), "text": "hello"})
    stranger["recipient"] = {"id": "999"}
    assert bot.post(envelope(stranger, page_id="999")).status_code == 200
    bot.say("u1", "hello")
    bot.drain()
    assert [(e.page_id, e.status) for e in bot.events()] == [
        ("999", "unknown_page"),
        (PAGE_ID, "done"),
    ]
    assert bot.graph.texts("u1") == ["Hi Ada!"]
    assert rows(database_url, "conversations", page_id="999") == []


def handover_item(psid: str, kind: str, new_owner: str, previous: str | None = None) -> dict:
    body = {"previous_owner_app_id": previous, "new_owner_app_id": new_owner, "metadata": "m"}
    return item(psid, **{kind: body})


def test_handed_over_conversations_stay_silent_until_given_back(
    start_bot: Callable[..., Bot], database_url: str
) -> None:
    bot = start_bot(database_url, settings=make_settings(database_url, app_id=OUR_APP_ID))
    bot.say("u1", "agent")
    bot.drain()
    assert bot.graph.texts("u1") == ["Connecting you to a person."]
    passes = [c for c in bot.graph.calls if c.path == "/me/pass_thread_control"]
    assert [c.body for c in passes] == [
        {
            "recipient": {"id": "u1"},
            "target_app_id": int(PAGE_INBOX_APP_ID),  # a number, as in Meta's examples
            "metadata": "asked for a person",
        }
    ]
    # While a person has the thread: recorded, never answered.
    bot.say("u1", "hello", "anyone?")
    bot.post(envelope(text_item("u1", "hello again"), standby=True))
    bot.drain()
    assert bot.graph.texts("u1") == ["Connecting you to a person."]
    inbound = rows(database_url, "message_log", direction="inbound", psid="u1")
    assert [r.body["text"] for r in inbound] == ["agent", "hello", "anyone?"]
    # The Page Inbox passes the thread back to us: the bot answers again.
    back = handover_item("u1", "pass_thread_control", OUR_APP_ID, PAGE_INBOX_APP_ID)
    bot.post(envelope(back))
    bot.say("u1", "hello")
    bot.drain()
    assert bot.graph.texts("u1") == ["Connecting you to a person.", "Hi Ada!"]
    # A person takes the thread from us: silence again.
    taken = handover_item("u1", "take_thread_control", PAGE_INBOX_APP_ID, OUR_APP_ID)
    bot.post(envelope(taken))
    bot.say("u1", "hello")
    bot.drain()
    assert len(bot.graph.texts("u1")) == 2
    (state,) = rows(database_url, "conversations", psid="u1")
    assert state.handed_over is True
    statuses = [(e.kind, e.status) for e in bot.events()]
    assert ("pass_thread_control", "done") in statuses
    assert ("take_thread_control", "done") in statuses
    assert ("standby", "ignored") in statuses


def test_handover_without_our_app_id(start_bot: Callable[..., Bot], database_url: str) -> None:
    bot = start_bot(database_url)  # FLOW_APP_ID not set
    bot.post(envelope(handover_item("u1", "pass_thread_control", PAGE_INBOX_APP_ID)))
    bot.say("u1", "hello")
    bot.drain()
    assert bot.graph.texts("u1") == []  # passed to the Page Inbox: not ours
    bot.post(envelope(handover_item("u1", "pass_thread_control", "42", PAGE_INBOX_APP_ID)))
    bot.say("u1", "hello")
    bot.drain()
    assert bot.graph.texts("u1") == ["Hi Ada!"]  # delivered to us: ours
    bot.post(envelope(handover_item("u1", "take_thread_control", "77", "42")))
    bot.say("u1", "hello")
    bot.drain()
    assert bot.graph.texts("u1") == ["Hi Ada!"]  # taken from us


def test_delivery_and_read_receipts_mark_sent_messages(
    start_bot: Callable[..., Bot], database_url: str
) -> None:
    bot = start_bot(database_url)
    bot.say("u1", "hello")
    bot.drain()
    (sent,) = rows(database_url, "message_log", direction="outbound", psid="u1")
    assert sent.status == "sent" and sent.mid
    # A delivery whose watermark is older, naming the message by mid.
    delivery = item("u1", delivery={"mids": [sent.mid], "watermark": 1})
    del delivery["timestamp"]  # Meta's delivery events carry none
    bot.post(envelope(delivery))
    bot.drain()
    (after_delivery,) = rows(database_url, "message_log", direction="outbound", psid="u1")
    assert after_delivery.status == "delivered"
    assert after_delivery.delivered_at is not None
    later = int(time.time() * 1000) + 60_000
    bot.post(envelope(item("u1", read={"watermark": later})))
    bot.drain()
    (after_read,) = rows(database_url, "message_log", direction="outbound", psid="u1")
    assert after_read.status == "read"
    assert [(e.kind, e.status) for e in bot.events()][-2:] == [
        ("delivery", "done"),
        ("read", "done"),
    ]


def test_a_read_watermark_before_the_send_changes_nothing(
    start_bot: Callable[..., Bot], database_url: str
) -> None:
    bot = start_bot(database_url)
    bot.say("u1", "hello")
    bot.drain()
    bot.post(envelope(item("u1", read={"watermark": 1})))
    bot.drain()
    (row,) = rows(database_url, "message_log", direction="outbound", psid="u1")
    assert row.status == "sent"


def test_echoes_are_recorded_and_never_trigger_a_flow(
    start_bot: Callable[..., Bot], database_url: str
) -> None:
    bot = start_bot(database_url)
    echo = {
        "sender": {"id": PAGE_ID},
        "recipient": {"id": "u1"},
        "timestamp": 1457764197627,
        "message": {"is_echo": True, "app_id": 1517776481860111, "mid": new_mid(), "text": "hello"},
    }
    bot.post(envelope(echo))
    bot.post(envelope(echo, standby=True))
    bot.drain()
    assert bot.graph.sends() == []
    assert [(e.kind, e.psid, e.status) for e in bot.events()] == [
        ("echo", "u1", "done"),
        ("standby", "u1", "ignored"),
    ]
    assert rows(database_url, "conversations") == []


def test_record_only_events_of_a_known_page_are_settled_at_ingress(
    start_bot: Callable[..., Bot], database_url: str
) -> None:
    bot = start_bot(database_url)
    echo = {
        "sender": {"id": PAGE_ID},
        "recipient": {"id": "u1"},
        "message": {"is_echo": True, "app_id": 1, "mid": new_mid(), "text": "hello"},
    }
    bot.post(envelope(echo))  # the page is not known yet: processed the long way
    bot.drain()
    assert [(e.kind, e.status) for e in bot.events()] == [("echo", "done")]
    stranger = {**echo, "sender": {"id": "999"}, "message": {**echo["message"], "mid": new_mid()}}
    bot.post(envelope(stranger, page_id="999"))
    bot.drain()

    # Now the page is known: settled before the 200, never queued.
    later = [
        {**echo, "message": {**echo["message"], "mid": new_mid()}},
        item("u2", reaction={"reaction": "like", "emoji": "x", "action": "react", "mid": "m"}),
        item("u3", game_play={"game_id": "1"}),
    ]
    depth_before = bot.server.dispatcher.depth
    assert bot.post(envelope(*later)).status_code == 200
    assert bot.post(envelope(text_item("u4", "psst"), standby=True)).status_code == 200
    assert bot.server.dispatcher.depth == depth_before == 0
    settled = [(e.kind, e.status, e.processed_at is not None) for e in bot.events()[2:]]
    assert settled == [
        ("echo", "done", True),
        ("reaction", "ignored", True),
        ("unknown", "ignored", True),
        ("standby", "ignored", True),
    ]
    # An unknown page's events still go the long way.
    assert bot.events()[1].status == "unknown_page"
    metrics = bot.get("/metrics").text
    assert 'flow_events_processed_total{kind="echo",status="done"} 2.0' in metrics


def test_postbacks_referrals_and_quick_replies_reach_the_flows(
    start_bot: Callable[..., Bot], database_url: str
) -> None:
    bot = start_bot(database_url)
    get_started = {
        "mid": new_mid(),
        "title": "Get Started",
        "payload": "GET_STARTED",
        "referral": {"ref": "summer", "source": "SHORTLINK", "type": "OPEN_THREAD"},
    }
    bot.post(envelope(item("u1", postback=get_started)))
    plain = {"mid": new_mid(), "title": "Start", "payload": "GET_STARTED"}
    bot.post(envelope(item("u2", postback=plain)))
    bot.post(envelope(item("u3", referral={"ref": "summer", "source": "SHORTLINK"})))
    quick = {"mid": new_mid(), "text": "Tea", "quick_reply": {"payload": "TEA"}}
    bot.post(envelope(item("u4", message=quick)))
    sticker = {"type": "sticker", "payload": {"sticker_id": 369239263222822, "url": "https://s/1"}}
    bot.post(envelope(item("u5", message={"mid": new_mid(), "attachments": [sticker]})))
    reaction = {"reaction": "love", "emoji": "\u2764\ufe0f", "action": "react", "mid": "m_x"}
    bot.post(envelope(item("u6", reaction=reaction)))
    bot.drain()
    assert bot.graph.texts("u1") == ["Summer sale!"]  # the m.me ref picks the flow
    assert bot.graph.texts("u2") == ["Hi !"]  # no profile for u2: empty, still answered
    assert bot.graph.texts("u3") == ["Summer sale!"]
    assert bot.graph.texts("u4") == ["got Tea"]
    # A sticker has no text: the fallback flow answers it all the same.
    assert [t.startswith("got ") for t in bot.graph.texts("u5")] == [True]
    assert bot.graph.sends("u6") == []
    kinds = {(e.psid, e.kind, e.status) for e in bot.events()}
    assert ("u6", "reaction", "ignored") in kinds


def test_profiles_can_be_fetched_on_first_contact_once_and_kept(
    start_bot: Callable[..., Bot], database_url: str
) -> None:
    bot = start_bot(database_url, profiles_when_read=False)
    bot.say("u1", "hello", "hello")
    bot.say("u2", "hello", "hello")  # Meta has no profile for u2
    bot.post(envelope(item("u3", referral={"ref": "summer", "source": "SHORTLINK"})))
    bot.drain()
    assert bot.graph.texts("u1") == ["Hi Ada!", "Hi Ada!"]
    assert bot.graph.texts("u2") == ["Hi !", "Hi !"]
    assert bot.graph.texts("u3") == ["Summer sale!"]
    # Before each user's first event (u3's flow shows nothing of it), once per user.
    assert sorted(c.psid for c in bot.graph.profile_calls()) == ["u1", "u2", "u3"]
    call = bot.graph.profile_calls()[0]
    assert call.params["fields"] == "first_name,last_name,profile_pic,locale,timezone,gender"
    (contact,) = rows(database_url, "contacts")
    assert (contact.psid, contact.first_name, contact.last_name) == ("u1", "Ada", "Lovelace")
    bot.stop()
    again = start_bot(database_url, profiles_when_read=False)  # reads the contacts table
    again.say("u1", "hello")
    again.drain()
    assert len(again.graph.profile_calls()) == 3
    assert again.graph.texts("u1")[-1] == "Hi Ada!"


def test_profiles_are_fetched_only_for_turns_that_show_them_by_default(
    start_bot: Callable[..., Bot], database_url: str
) -> None:
    bot = start_bot(database_url)
    # A turn that shows nothing of the profile does not fetch it (a static text) …
    bot.post(envelope(item("u3", referral={"ref": "summer", "source": "SHORTLINK"})))
    bot.drain()
    assert bot.graph.texts("u3") == ["Summer sale!"]
    assert bot.graph.profile_calls() == []
    # … until one does; the turn is then run with it, and the profile is kept.
    bot.graph.profiles["u3"] = {"first_name": "Grace"}
    bot.say("u3", "hello", "hello")
    bot.drain()
    assert bot.graph.texts("u3") == ["Summer sale!", "Hi Grace!", "Hi Grace!"]
    assert [c.psid for c in bot.graph.profile_calls()] == ["u3"]
    assert [e.status for e in bot.events(psid="u3")] == ["done", "done", "done"]
    inbound = rows(database_url, "message_log", direction="inbound", psid="u3")
    assert len(inbound) == 3  # the turn that needed the profile was logged once


def test_an_event_that_keeps_failing_is_given_up_and_the_conversation_goes_on(
    start_bot: Callable[..., Bot], database_url: str
) -> None:
    bot = start_bot(
        database_url, dispatcher_options={"max_attempts": 3, "backoff": 0.01, "max_backoff": 0.02}
    )
    bot.say("u1", "hello")
    bot.drain()
    engine = bot.engine()
    with write_lock(engine), engine.begin() as conn:
        conn.execute(text("ALTER TABLE conversations RENAME TO conversations_away"))
    try:
        bot.say("u1", "lost")
        bot.drain()
    finally:
        with write_lock(engine), engine.begin() as conn:
            conn.execute(text("ALTER TABLE conversations_away RENAME TO conversations"))
    bot.say("u1", "found")
    bot.drain()
    assert bot.graph.texts("u1") == ["Hi Ada!", "got found"]
    failed = [e for e in bot.events() if e.status == "failed"]
    assert len(failed) == 1
    assert failed[0].payload["message"]["text"] == "lost"
    assert failed[0].attempts == 3
    assert "conversations" in failed[0].error
    metrics = bot.get("/metrics").text
    assert 'flow_events_failed_total{kind="message"} 1.0' in metrics


def test_graph_profile_errors_never_fail_an_event(
    start_bot: Callable[..., Bot], database_url: str
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(500, text="down")
        return httpx.Response(200, json={"recipient_id": "u1", "message_id": "m_1"})

    bot = start_bot(database_url, transport=httpx.MockTransport(refuse))
    bot.say("u1", "hello")
    bot.drain()
    assert [e.status for e in bot.events()] == ["done"]
    (sent,) = rows(database_url, "message_log", direction="outbound")
    assert sent.body["payload"] == {"text": "Hi !"}
    assert sent.status == "sent"


def test_a_receipt_with_an_impossible_watermark_is_done_not_failed(
    start_bot: Callable[..., Bot], database_url: str
) -> None:
    bot = start_bot(database_url)
    bot.post(envelope(item("u1", read={"watermark": -996588298460285894656})))
    bot.post(envelope(item("u1", delivery={"mids": ["m_x"], "watermark": 10**20})))
    bot.drain()
    assert [(e.kind, e.status) for e in bot.events()] == [("read", "done"), ("delivery", "done")]
