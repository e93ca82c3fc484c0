"""Several server instances on one PostgreSQL database (issue 6, multi-instance mode).

Two real apps (`create_app`, each with its own engine, dispatcher and sender) share one schema
and one fake Graph API. What is checked: a conversation whose events arrive at both instances
is answered in order and exactly once; an event left pending by a dead instance is taken over
(`reclaim_after`) and an event behind it waits for it; a conversation's outbound rows leased by
another (dead) instance are sent once the lease runs out, and not before. The crash-and-load
version of these lives in test_fault_injection.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from server_kit import PAGE_ID, PG_URL, Bot, envelope, make_settings, pg_schema, text_item
from sqlalchemy import insert, select

from runtime import db, tables
from server.messenger import split_events

pytestmark = pytest.mark.skipif(not PG_URL, reason="FLOW_TEST_DATABASE_URL is not set")


@pytest.fixture
def pg_db() -> Iterator[str]:
    """An empty, migrated PostgreSQL schema of its own."""
    with pg_schema() as url:
        db.upgrade(url)
        yield url


def _two(start_bot: Callable[..., Bot], url: str, **changes: float) -> tuple[Bot, Bot]:
    settings = make_settings(url, **changes)
    return start_bot(url, settings=settings), start_bot(url, settings=settings)


def _wait(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def _settled(bot: Bot) -> bool:
    with bot.engine().connect() as conn:
        events = conn.execute(
            select(tables.webhook_events.c.id).where(tables.webhook_events.c.status == "pending")
        ).first()
        outbound = conn.execute(
            select(tables.message_log.c.id).where(tables.message_log.c.status == "pending")
        ).first()
    return events is None and outbound is None


def test_a_conversation_split_over_two_instances_is_answered_in_order_once(
    start_bot: Callable[..., Bot], pg_db: str
) -> None:
    a, b = _two(start_bot, pg_db)
    users = [f"77{n:04d}" for n in range(20)]
    for psid in users:
        # A user's messages come back to back, alternately to each instance: the second
        # reaches B while A is still on the first (without the gate B would answer it first).
        for turn in range(6):
            (a, b)[turn % 2].say(psid, f"m{turn}")
    _wait(lambda: _settled(a))
    for psid in users:
        assert a.graph.texts(psid) == [f"got m{turn}" for turn in range(6)], psid
    statuses = {row.status for row in a.events()}
    assert statuses == {"done"}
    assert len(a.events()) == 120


def _store_pending(bot: Bot, body: dict) -> list[int]:
    """Store events as an instance that died right after its ack would have."""
    assert bot.server.writer is not None
    inbox = bot.server.writer.inbox
    return [e.id for e in inbox.add(split_events(body))]


def test_an_event_left_by_a_dead_instance_is_taken_over_and_keeps_its_place(
    start_bot: Callable[..., Bot], pg_db: str
) -> None:
    a, _ = _two(start_bot, pg_db, reclaim_after=1.0)
    psid = "880001"
    # "first" was stored by an instance that died before processing it; "second" then
    # arrives here: it must wait for "first", which any instance takes over after 1 s.
    (first,) = _store_pending(a, envelope(text_item(psid, "first")))
    started = time.monotonic()
    a.say(psid, "second")
    _wait(lambda: len(a.graph.texts(psid)) == 2)
    assert a.graph.texts(psid) == ["got first", "got second"]
    assert time.monotonic() - started >= 0.9  # not before the reclaim delay
    _wait(lambda: _settled(a))
    assert [row.status for row in a.events()] == ["done", "done"]
    assert a.events()[0].id == first


def test_rows_leased_by_another_instance_wait_for_the_lease_to_run_out(
    start_bot: Callable[..., Bot], pg_db: str
) -> None:
    a, _ = _two(start_bot, pg_db, outbox_lease_seconds=1.5)
    psid = "990001"
    now = datetime.now(UTC)
    with a.engine().begin() as conn:
        # A dead instance's lease, and the row it was about to send.
        conn.execute(
            insert(tables.outbox_leases).values(
                page_id=PAGE_ID, psid=psid, owner="dead", expires_at=now + timedelta(seconds=2)
            )
        )
        conn.execute(
            insert(tables.message_log).values(
                page_id=PAGE_ID,
                psid=psid,
                direction="outbound",
                kind="message",
                body={"payload": {"text": "from the dead"}, "tag": None, "source": None},
                status="pending",
                created_at=now - timedelta(seconds=5),
            )
        )
    started = time.monotonic()
    a.running.call(_notify, a, psid)
    time.sleep(1.0)
    assert a.graph.texts(psid) == []  # the lease still holds
    _wait(lambda: a.graph.texts(psid) == ["from the dead"])
    assert time.monotonic() - started >= 1.5
    _wait(lambda: _settled(a))
    assert a.graph.texts(psid) == ["from the dead"]  # sent once
    with a.engine().connect() as conn:
        owners = conn.execute(select(tables.outbox_leases.c.owner)).scalars().all()
    assert "dead" not in owners


async def _notify(bot: Bot, psid: str) -> None:
    assert bot.server.sender is not None
    bot.server.sender.notify(PAGE_ID, psid)
