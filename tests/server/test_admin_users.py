"""`DELETE /admin/users/{page_id}/{psid}` (server/admin.py): the admin token, the
erasure on SQLite and PostgreSQL, and what the running server holds in memory."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from server_kit import (
    ADMIN_TOKEN,
    BOT_FLOW,
    PAGE_ID,
    Bot,
    FakeGraph,
    envelope,
    make_settings,
    rows,
    serving,
    signed,
    text_item,
)
from sqlalchemy import text

from runtime import db, tables
from runtime.forget import ForgetReport, user_data
from server.app import create_app

THREE = """
flow three
  when user says "three"
  step start
    say "one"
    say "two"
    say "three"
"""
PERSONAL = ("contacts", "conversations", "message_log", "webhook_events", "flow_events")


@pytest.fixture
def flows_dir(tmp_path: Path) -> Path:
    """The test bot, and a flow that sends three messages in one turn."""
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "bot.flow").write_text(BOT_FLOW + THREE, encoding="utf-8")
    return folder


def forget(bot: Bot, psid: str, token: str | None = ADMIN_TOKEN, **headers: str) -> httpx.Response:
    if token is not None:
        headers.setdefault("Authorization", f"Bearer {token}")
    return bot.running.request("DELETE", f"/admin/users/{PAGE_ID}/{psid}", headers=headers)


def stored(url: str, psid: str) -> ForgetReport:
    engine = db.create_engine_for(url)
    try:
        return user_data(engine, PAGE_ID, psid)
    finally:
        engine.dispose()


def talked(bot: Bot, *psids: str) -> None:
    """Each user says hello (and gets their profile fetched); wait until all is done."""
    for psid in psids:
        bot.say(psid, "hello")
    bot.drain()


# ----------------------------------------------------------------------------- the token


def test_forget_needs_the_admin_token(start_bot: Callable[..., Bot], sqlite_url: str) -> None:
    bot = start_bot(sqlite_url)
    talked(bot, "u1")
    before = stored(sqlite_url, "u1")
    assert before.total > 0

    assert forget(bot, "u1", None).status_code == 401
    assert forget(bot, "u1", "wrong").status_code == 401
    basic = forget(bot, "u1", None, Authorization=f"Basic {ADMIN_TOKEN}")
    assert basic.status_code == 401
    assert basic.headers["www-authenticate"] == "Bearer"
    assert basic.json() == {"error": "missing or wrong token"}
    assert stored(sqlite_url, "u1") == before


def test_forget_is_off_without_an_admin_token(
    start_bot: Callable[..., Bot], sqlite_url: str
) -> None:
    settings = make_settings(sqlite_url).model_copy(update={"admin_token": None})
    bot = start_bot(sqlite_url, settings=settings)
    talked(bot, "u1")
    before = stored(sqlite_url, "u1")

    response = forget(bot, "u1", "anything")

    assert response.status_code == 403
    assert "FLOW_ADMIN_TOKEN" in response.json()["error"]
    assert stored(sqlite_url, "u1") == before


def test_other_methods_are_not_allowed(start_bot: Callable[..., Bot], sqlite_url: str) -> None:
    bot = start_bot(sqlite_url)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = bot.running.request("GET", f"/admin/users/{PAGE_ID}/u1", headers=headers)
    assert response.status_code == 405


# ----------------------------------------------------------------------------- the erasure


def test_forget_erases_the_user_and_answers_the_counts(
    start_bot: Callable[..., Bot], database_url: str
) -> None:
    bot = start_bot(database_url)
    talked(bot, "u1", "u2")
    before = stored(database_url, "u1")
    for table in PERSONAL:
        assert before.as_dict()[table] > 0, table
    others = {t: rows(database_url, t, psid="u2") for t in PERSONAL}

    response = forget(bot, "u1")

    assert response.status_code == 200, response.text
    assert response.json() == {"page_id": PAGE_ID, "psid": "u1", "erased": before.as_dict()}
    assert stored(database_url, "u1") == ForgetReport()
    assert {t: rows(database_url, t, psid="u2") for t in PERSONAL} == others


def test_an_unknown_user_is_404_with_zero_counts(
    start_bot: Callable[..., Bot], database_url: str
) -> None:
    bot = start_bot(database_url)
    talked(bot, "u1")
    before = stored(database_url, "u1")

    response = forget(bot, "nobody")

    assert response.status_code == 404
    assert response.json() == {
        "error": "nothing is stored about this user",
        "page_id": PAGE_ID,
        "psid": "nobody",
        "erased": ForgetReport().as_dict(),
    }
    assert stored(database_url, "u1") == before
    # Asking twice is harmless: the second answer is 404.
    assert forget(bot, "u1").status_code == 200
    assert forget(bot, "u1").status_code == 404


def test_messages_waiting_in_the_database_are_never_sent(
    start_bot: Callable[..., Bot], database_url: str, graph: FakeGraph
) -> None:
    """Outbound rows committed by a turn but not loaded by the sender yet are erased, so
    telling the sender about them afterwards sends nothing."""
    bot = start_bot(database_url)
    talked(bot, "u1")
    sent_before = len(graph.sends("u1"))
    with bot.engine().begin() as conn:
        conn.execute(
            tables.message_log.insert(),
            [
                {
                    "page_id": PAGE_ID,
                    "psid": "u1",
                    "direction": "outbound",
                    "kind": "message",
                    "body": {"payload": {"text": f"late {i}"}},
                    "status": "pending",
                    "created_at": datetime.now(UTC),
                }
                for i in range(2)
            ],
        )

    assert forget(bot, "u1").json()["erased"]["message_log"] == 4

    async def notify() -> None:
        bot.server.sender.notify(PAGE_ID, "u1")

    bot.running.call(notify)
    bot.drain()
    assert len(graph.sends("u1")) == sent_before
    assert rows(database_url, "message_log", psid="u1") == []


def test_a_database_failure_erases_nothing_and_answers_503(
    start_bot: Callable[..., Bot], sqlite_url: str
) -> None:
    bot = start_bot(sqlite_url)
    talked(bot, "u1")
    before = stored(sqlite_url, "u1")
    with bot.engine().begin() as conn:  # the fifth of the six deletes will fail
        conn.execute(text("ALTER TABLE flow_events RENAME TO flow_events_away"))

    response = forget(bot, "u1")

    assert response.status_code == 503
    assert "nothing was erased" in response.json()["error"]
    with bot.engine().begin() as conn:
        conn.execute(text("ALTER TABLE flow_events_away RENAME TO flow_events"))
    assert stored(sqlite_url, "u1") == before


# ----------------------------------------------------------------------------- memory


def test_a_forgotten_users_profile_is_not_kept_in_memory(
    start_bot: Callable[..., Bot], sqlite_url: str, graph: FakeGraph
) -> None:
    bot = start_bot(sqlite_url)
    talked(bot, "u1")
    assert [c.psid for c in graph.profile_calls()] == ["u1"]
    assert forget(bot, "u1").status_code == 200

    talked(bot, "u1")  # a new person to the bot: their profile is fetched again

    assert [c.psid for c in graph.profile_calls()] == ["u1", "u1"]
    assert stored(sqlite_url, "u1").contacts == 1


class HeldSends(httpx.AsyncBaseTransport):
    """The fake Graph API, with the Send API calls to one user held until `release`."""

    def __init__(self, graph: FakeGraph, psid: str) -> None:
        self.inner = graph.transport()
        self.psid = psid
        self.holding = threading.Event()
        self.release = threading.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/me/messages") and not self.release.is_set():
            body = json.loads(request.content)
            if body.get("recipient", {}).get("id") == self.psid:
                self.holding.set()
                while not self.release.is_set():
                    await asyncio.sleep(0.005)
        return await self.inner.handle_async_request(request)


def test_messages_the_sender_already_loaded_are_not_sent_after_forget(
    start_bot: Callable[..., Bot], sqlite_url: str, graph: FakeGraph
) -> None:
    held = HeldSends(graph, "u1")
    bot = start_bot(sqlite_url, transport=held)
    bot.say("u1", "three")
    assert held.holding.wait(10), "the first message was never sent"
    # "one" is on its way to Meta; "two" and "three" wait in the sender's memory.
    assert forget(bot, "u1").status_code == 200
    held.release.set()
    bot.drain()
    assert graph.texts("u1") == ["one"]


# ----------------------------------------------------------------------------- real HTTP


def test_forget_over_a_real_socket(sqlite_url: str, flows_dir: Path, graph: FakeGraph) -> None:
    app = create_app(
        make_settings(sqlite_url),
        flows=[flows_dir],
        transport=graph.transport(),
        freeze_gc=False,
    )
    with serving(app) as base:
        raw = json.dumps(envelope(text_item("u1", "hello"))).encode()
        assert httpx.post(f"{base}/webhook", content=raw, headers=signed(raw)).status_code == 200
        deadline = time.monotonic() + 10
        while not (rows(sqlite_url, "message_log", psid="u1", direction="outbound")):
            assert time.monotonic() < deadline, "the message was never processed"
            time.sleep(0.02)
        url = f"{base}/admin/users/{PAGE_ID}/u1"

        refused = httpx.delete(url, headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401
        assert stored(sqlite_url, "u1").total > 0

        erased = httpx.delete(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert erased.status_code == 200, erased.text
        assert erased.json()["erased"]["conversations"] == 1
        assert stored(sqlite_url, "u1") == ForgetReport()
