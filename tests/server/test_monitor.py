"""`flowc monitor`: the numbers from a known dataset on SQLite and PostgreSQL, the text
rendering (snapshot), the CLI's one-line failures, and the real counts after a conversation
through the real server over HTTP (the e2e harness of test_e2e.py, with the fake Graph API)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from live_kit import (  # noqa: F401 (db_url, graph, live and program: the fixtures)
    ADA,
    BACKENDS,
    GREAT,
    NAME_Q,
    PAGE_ID,
    ROOT,
    Live,
    db_url,
    graph,
    live,
    program,
    settled,
)
from outbox_kit import SQL_BACKENDS, migrated_url

from flowlang.cli import main
from runtime import db, tables
from server import webhook_sender as wh
from server.monitor import error_kind, error_meaning, gather
from server.monitorcli import monitor_command, render_text

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(hours=24)
SHOP, HELD, STRAY = "1111111111", "2222222222", "3333333333"
U1, U2, U3, U4, U5 = "100001", "100002", "200003", "100004", "100005"
LEAD = "lead_generation"


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


def iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# ----------------------------------------------------------------------------- the dataset


def _message(
    page: str,
    psid: str,
    direction: str,
    status: str,
    created: datetime,
    *,
    sent: datetime | None = None,
    delivered: datetime | None = None,
    read: datetime | None = None,
    code: int | None = None,
    subcode: int | None = None,
    error: str | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"text": "hello"}
    if direction == "outbound":
        body = {"payload": {"text": "SECRET CONTENT"}, "tag": None, "seconds": 0.0}
        body["source"] = source
    return {
        "page_id": page,
        "psid": psid,
        "direction": direction,
        "mid": None,
        "kind": "message",
        "body": body,
        "status": status,
        "error_code": code,
        "error_subcode": subcode,
        "error_message": error,
        "created_at": created,
        "sent_at": sent,
        "delivered_at": delivered,
        "read_at": read,
    }


GONE = "(#551) This person isn't available right now."
WINDOW_CLOSED = "(#10) This message is sent outside of allowed window."
FAULT = "cannot show 'Nice to meet you, {{ lead_nam }}!': lead_nam is not set"


def _messages() -> list[dict[str, Any]]:
    inbound = [
        _message(SHOP, U1, "inbound", "received", ago(hours=30)),  # before the window
        _message(SHOP, U1, "inbound", "received", ago(hours=6)),
        _message(SHOP, U1, "inbound", "received", ago(hours=5)),
        _message(SHOP, U1, "inbound", "received", ago(hours=1)),
        _message(SHOP, U2, "inbound", "received", ago(hours=4)),
        _message(SHOP, U2, "inbound", "received", ago(hours=3)),
        _message(HELD, U3, "inbound", "received", ago(hours=1)),
    ]
    out = "outbound"
    shop = [
        # Queued before the window, sent in it: counts for the delivery rate only.
        _message(
            SHOP, U1, out, "delivered", ago(hours=25), sent=ago(hours=23), delivered=ago(hours=22)
        ),
        _message(SHOP, U1, out, "read", ago(hours=30), sent=ago(hours=30), read=ago(hours=29)),
        _message(
            SHOP, U1, out, "read", ago(hours=6), sent=ago(hours=6), delivered=ago(hours=6),
            read=ago(hours=5),
        ),
        _message(
            SHOP, U1, out, "read", ago(hours=5), sent=ago(hours=5), delivered=ago(hours=5),
            read=ago(hours=4),
        ),
        _message(
            SHOP, U1, out, "delivered", ago(hours=1), sent=ago(hours=1), delivered=ago(hours=1)
        ),
        _message(SHOP, U1, out, "sent", ago(hours=1), sent=ago(hours=1)),
        _message(
            SHOP, U2, out, "failed", ago(hours=4), code=551, error=GONE,
            source="flows/lead_generation.flow:27",
        ),
        _message(
            SHOP, U2, out, "failed", ago(hours=3), code=551, error=GONE,
            source="flows/lead_generation.flow:32",
        ),
        _message(
            SHOP, U2, out, "failed", ago(hours=2), code=10, subcode=2018278,
            error=WINDOW_CLOSED, source="flows/welcome.flow:5",
        ),
        _message(SHOP, U2, out, "pending", ago(minutes=10)),
    ]  # fmt: skip
    held = [
        _message(HELD, U3, out, "pending", ago(hours=1)),
        _message(HELD, U3, out, "pending", ago(hours=1)),
        _message(HELD, U3, out, "pending", ago(days=3)),
    ]
    return inbound + shop + held


def _events() -> list[dict[str, Any]]:
    rows = []

    def event(page: str, received: datetime, lag_ms: int | None, status: str) -> None:
        processed = None if lag_ms is None else received + timedelta(milliseconds=lag_ms)
        rows.append(
            {
                "page_id": page,
                "psid": "x",
                "event_key": f"key-{len(rows)}",
                "kind": "message",
                "payload": {},
                "received_at": received,
                "status": status,
                "attempts": 0,
                "processed_at": processed,
                "error": "boom" if status == "failed" else None,
            }
        )

    for i in range(1, 21):  # lags of 10 to 200 ms; the last one failed
        event(SHOP, ago(hours=2) + timedelta(minutes=i), i * 10, "failed" if i == 20 else "done")
    event(SHOP, ago(seconds=90), None, "pending")
    event(SHOP, ago(days=2), None, "pending")  # the oldest pending, from before the window
    event(SHOP, ago(hours=26), 99_999, "done")  # before the window
    for lag in (3000, 1000, 2000):
        event(HELD, ago(hours=1), lag, "done")
    for _ in range(2):
        event(STRAY, ago(minutes=30), 0, "unknown_page")
    return rows


def _conversation(
    page: str,
    psid: str,
    status: str,
    updated: datetime,
    flow: str | None = None,
    step: str | None = None,
    handed_over: bool = False,
) -> dict[str, Any]:
    return {
        "page_id": page,
        "psid": psid,
        "flow_id": flow,
        "flow_version": "h" if flow else None,
        "step": step,
        "position": None,
        "status": status,
        "tries": 0,
        "handed_over": handed_over,
        "variables": {},
        "stack": [],
        "state_version": 1,
        "version": 1,
        "created_at": ago(days=10),
        "updated_at": updated,
    }


def _flow_event(
    page: str,
    psid: str,
    flow: str,
    kind: str,
    at: datetime,
    step: str = "start",
    detail: str | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    return {
        "page_id": page,
        "psid": psid,
        "flow_id": flow,
        "step": step,
        "kind": kind,
        "detail": detail,
        "source": source,
        "at": at,
    }


def _flow_version(flow: str, steps: list[str]) -> dict[str, Any]:
    return {
        "content_hash": f"hash-{flow}",
        "flow_id": flow,
        "ir_version": 1,
        "ir": {"id": flow, "steps": {step: {} for step in steps}},
        "deployed_at": ago(days=30),
        "is_current": True,
    }


def fill(url: str) -> None:
    """Write the known dataset (times relative to NOW)."""
    engine = db.create_engine_for(url)
    pages = [
        {
            "page_id": SHOP,
            "name": "Acme shop",
            "token_encrypted": "x",
            "healthy": True,
            "last_error": None,
            "updated_at": ago(days=5),
        },
        {
            "page_id": HELD,
            "name": None,
            "token_encrypted": "x",
            "healthy": False,
            "last_error": "Graph API error 190/463 (bad_token, HTTP 400): token expired",
            "updated_at": ago(days=3),
        },
    ]
    conversations = [
        _conversation(SHOP, U1, "idle", ago(hours=1)),
        _conversation(SHOP, U2, "waiting", ago(hours=2), LEAD, "collect_name"),
        _conversation(SHOP, U4, "waiting", ago(days=3), LEAD, "collect_email"),
        _conversation(SHOP, U5, "waiting", ago(hours=5), "customer_service", "ask_issue", True),
        _conversation(HELD, U3, "waiting", ago(hours=1), LEAD, "collect_name"),
    ]
    flow_events = [
        _flow_event(SHOP, U1, LEAD, "start", ago(hours=6)),
        _flow_event(SHOP, U1, LEAD, "end", ago(hours=5), step="thanks"),
        _flow_event(SHOP, U2, LEAD, "start", ago(hours=4)),
        _flow_event(
            SHOP, U2, LEAD, "fault", ago(hours=3, minutes=30), "collect_name", FAULT,
            "flows/lead_generation.flow:34",
        ),
        _flow_event(HELD, U3, LEAD, "start", ago(hours=1)),
        _flow_event(SHOP, U4, LEAD, "start", ago(days=3)),  # before the window
        _flow_event(SHOP, U5, "customer_service", "start", ago(hours=5)),
        _flow_event(SHOP, U5, "customer_service", "hand_over", ago(hours=5), "ask_issue"),
    ]  # fmt: skip
    versions = [
        _flow_version(LEAD, ["start", "collect_name", "collect_email", "thanks", "no_email"]),
        _flow_version("customer_service", ["ask_issue"]),
        _flow_version("welcome", ["start"]),
    ]
    try:
        with engine.begin() as conn:
            conn.execute(tables.pages.insert(), pages)
            conn.execute(tables.message_log.insert(), _messages())
            conn.execute(tables.webhook_events.insert(), _events())
            conn.execute(tables.conversations.insert(), conversations)
            conn.execute(tables.flow_events.insert(), flow_events)
            conn.execute(tables.flow_versions.insert(), versions)
    finally:
        engine.dispose()


@pytest.fixture(params=SQL_BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database on each backend, filled with the known dataset."""
    pg = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    with migrated_url(request.param, tmp_path, pg) as found:
        fill(found)
        yield found


def report(url: str, **options: Any) -> dict[str, Any]:
    engine = db.create_engine_for(url)
    try:
        return gather(engine, now=NOW, since=DAY, **options).to_json()
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------- the numbers

SHOP_PAGE = {
    "page_id": SHOP,
    "name": "Acme shop",
    "health": "ok",
    "last_error": None,
    "messages": {"inbound": 5, "outbound": 8, "failed": 3, "pending_now": 1},
    "delivery": {
        "sent": 5,
        "delivered": 4,
        "read": 2,
        "delivery_rate": 0.8,
        "read_rate": 0.4,
    },
    "failures": [
        {
            "code": 551,
            "subcode": None,
            "code_text": "551",
            "kind": "unreachable",
            "meaning": "this person isn't available (blocked the page, or left Messenger)",
            "count": 2,
            "last_at": iso(ago(hours=3)),
        },
        {
            "code": 10,
            "subcode": 2018278,
            "code_text": "10/2018278",
            "kind": "window_closed",
            "meaning": "the 24-hour window to answer this person has closed",
            "count": 1,
            "last_at": iso(ago(hours=2)),
        },
    ],
    "webhook": {
        "received": 21,
        "failed": 1,
        "lag_ms": {"p50": 100, "p95": 190, "max": 200},
        "pending_now": 2,
        "oldest_pending_at": iso(ago(days=2)),
        "oldest_pending_age_ms": 2 * 86_400_000,
    },
    "conversations": {"active": 3, "waiting": 2, "handed_over": 1},
}

HELD_PAGE = {
    "page_id": HELD,
    "name": None,
    "health": "token_refused",
    "last_error": "Graph API error 190/463 (bad_token, HTTP 400): token expired",
    "messages": {"inbound": 1, "outbound": 2, "failed": 0, "pending_now": 3},
    "delivery": {"sent": 0, "delivered": 0, "read": 0, "delivery_rate": None, "read_rate": None},
    "failures": [],
    "webhook": {
        "received": 3,
        "failed": 0,
        "lag_ms": {"p50": 2000, "p95": 3000, "max": 3000},
        "pending_now": 0,
        "oldest_pending_at": None,
        "oldest_pending_age_ms": None,
    },
    "conversations": {"active": 1, "waiting": 1, "handed_over": 0},
}

STRAY_PAGE = {
    "page_id": STRAY,
    "name": None,
    "health": "not_configured",
    "last_error": None,
    "messages": {"inbound": 0, "outbound": 0, "failed": 0, "pending_now": 0},
    "delivery": {"sent": 0, "delivered": 0, "read": 0, "delivery_rate": None, "read_rate": None},
    "failures": [],
    "webhook": {
        "received": 2,
        "failed": 0,
        "lag_ms": {"p50": 0, "p95": 0, "max": 0},
        "pending_now": 0,
        "oldest_pending_at": None,
        "oldest_pending_age_ms": None,
    },
    "conversations": {"active": 0, "waiting": 0, "handed_over": 0},
}


def flow(flow_id: str, **values: Any) -> dict[str, Any]:
    found = {
        "flow_id": flow_id,
        "starts": 0,
        "ends": 0,
        "completion_rate": None,
        "faults": 0,
        "hand_overs": 0,
        "waiting_now": 0,
        "drop_off": [],
    }
    return {**found, **values}


def send_failed(at: datetime, code: int, subcode: int | None, source: str) -> dict[str, Any]:
    return {
        "at": iso(at),
        "kind": "send_failed",
        "page_id": SHOP,
        "psid": U2,
        "flow_id": None,
        "step": None,
        "source": source,
        "code": code,
        "subcode": subcode,
        "code_text": f"{code}/{subcode}" if subcode else str(code),
        "meaning": error_meaning(code, subcode),
        "message": GONE if code == 551 else WINDOW_CLOSED,
    }


ERRORS = [
    send_failed(ago(hours=2), 10, 2018278, "flows/welcome.flow:5"),
    send_failed(ago(hours=3), 551, None, "flows/lead_generation.flow:32"),
    {
        "at": iso(ago(hours=3, minutes=30)),
        "kind": "flow_fault",
        "page_id": SHOP,
        "psid": U2,
        "flow_id": LEAD,
        "step": "collect_name",
        "source": "flows/lead_generation.flow:34",
        "code": None,
        "subcode": None,
        "code_text": None,
        "meaning": None,
        "message": FAULT,
    },
    send_failed(ago(hours=4), 551, None, "flows/lead_generation.flow:27"),
]


def user(page: str, psid: str, n_in: int, n_out: int, seen: datetime, **now: Any) -> dict:
    where = {"flow_id": None, "step": None, "status": None, "handed_over": False}
    return {
        "page_id": page,
        "psid": psid,
        "messages_in": n_in,
        "messages_out": n_out,
        "last_seen": iso(seen),
        **where,
        **now,
    }


def test_the_page_summary_counts_exactly_what_happened_in_the_window(url: str) -> None:
    assert report(url) == {
        "schema_version": 1,
        "generated_at": iso(NOW),
        "window": {"since": iso(NOW - DAY), "until": iso(NOW), "seconds": 86_400},
        "page_id": None,
        "pages": [SHOP_PAGE, HELD_PAGE, STRAY_PAGE],
        "flows": None,
        "errors": None,
        "users": None,
    }


def test_flows_errors_and_users_on_request(url: str) -> None:
    found = report(url, flows=True, errors=True, users=True)
    assert found["flows"] == [
        flow("customer_service", starts=1, completion_rate=0.0, hand_overs=1),
        flow(
            LEAD,
            starts=3,
            ends=1,
            completion_rate=0.3333,
            faults=1,
            waiting_now=3,
            # In the flow's own step order; the handed-over conversation is not a drop-off.
            drop_off=[
                {"step": "collect_name", "waiting": 2},
                {"step": "collect_email", "waiting": 1},
            ],
        ),
        flow("welcome"),  # deployed, nothing happened: shown all the same
    ]
    assert found["errors"] == ERRORS
    assert found["users"] == [
        user(SHOP, U1, 3, 4, ago(hours=1), status="idle"),
        user(SHOP, U2, 2, 4, ago(hours=3), flow_id=LEAD, step="collect_name", status="waiting"),
        user(HELD, U3, 1, 2, ago(hours=1), flow_id=LEAD, step="collect_name", status="waiting"),
    ]
    assert "SECRET CONTENT" not in json.dumps(found)  # no message contents, ever


def test_one_page_and_a_limit(url: str) -> None:
    found = report(url, page_id=SHOP, flows=True, errors=True, users=True, limit=2)
    assert found["page_id"] == SHOP
    assert found["pages"] == [SHOP_PAGE]
    lead = next(f for f in found["flows"] if f["flow_id"] == LEAD)
    assert lead == flow(
        LEAD,
        starts=2,
        ends=1,
        completion_rate=0.5,
        faults=1,
        waiting_now=2,
        drop_off=[{"step": "collect_name", "waiting": 1}, {"step": "collect_email", "waiting": 1}],
    )
    assert found["errors"] == ERRORS[:2]
    assert [u["psid"] for u in found["users"]] == [U1, U2]


def test_a_shorter_window_sees_less(url: str) -> None:
    engine = db.create_engine_for(url)
    try:
        found = gather(engine, now=NOW, since=timedelta(minutes=90), errors=True).to_json()
    finally:
        engine.dispose()
    shop = found["pages"][0]
    assert shop["messages"] == {"inbound": 1, "outbound": 3, "failed": 0, "pending_now": 1}
    assert shop["delivery"]["sent"] == 2
    assert shop["webhook"]["received"] == 1  # the pending one; nothing processed since
    assert shop["webhook"]["lag_ms"] == {"p50": None, "p95": None, "max": None}
    assert shop["webhook"]["oldest_pending_age_ms"] == 2 * 86_400_000  # the backlog is "now"
    assert found["errors"] == []


def test_an_unknown_page_id_shows_an_empty_unconfigured_page(url: str) -> None:
    found = report(url, page_id="999", flows=True)
    assert [(p["page_id"], p["health"], p["messages"]["inbound"]) for p in found["pages"]] == [
        ("999", "not_configured", 0)
    ]
    assert all(f["starts"] == 0 and f["drop_off"] == [] for f in found["flows"])


def test_the_text_output(tmp_path: Path, snapshot: Any) -> None:
    # One backend is enough: the tests above show both give the same report.
    url = f"sqlite:///{tmp_path / 'flowlang.db'}"
    db.upgrade(url)
    fill(url)
    engine = db.create_engine_for(url)
    try:
        found = gather(engine, now=NOW, since=DAY, flows=True, errors=True, users=True)
    finally:
        engine.dispose()
    text = render_text(found, since="24h")
    assert "SECRET CONTENT" not in text
    assert text == snapshot


# ----------------------------------------------------------------------------- small parts


def test_error_meanings_fall_back_to_the_code_then_the_kind() -> None:
    assert (
        error_meaning(100, 2018001) == "no such person for this page (a wrong or deleted user id)"
    )
    assert error_meaning(100, 12345) == "Meta refused a parameter of the message as invalid"
    assert error_meaning(613, 1) == "the Send API's rate limit was exceeded"
    assert error_meaning(42, None) == "Meta refused the message; see the error message"
    assert error_kind(42, None) == "permanent"
    assert error_meaning(None, None).startswith("no error code: Meta did not answer")


# ----------------------------------------------------------------------------- the command


def invoke(*args: str) -> Any:
    return CliRunner().invoke(monitor_command, list(args), catch_exceptions=False)


def test_flowc_lists_the_monitor_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert re.search(r"^  monitor ", result.stdout, re.MULTILINE)


def test_a_database_without_tables_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.db"
    result = invoke("--database-url", str(missing))
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert "has no Flowlang tables yet" in result.output
    assert not missing.exists()  # looking did not create it


def test_an_old_schema_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db.upgrade(url, "0002")
    result = invoke("--database-url", url)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert "flowc db upgrade" in result.output


def test_a_bad_since_is_one_line(tmp_path: Path) -> None:
    result = invoke("--since", "yesterday", "--database-url", str(tmp_path / "x.db"))
    assert result.exit_code == 1
    assert result.output.startswith("Error: --since 'yesterday' is not a duration: ")
    assert result.output.count("\n") == 1


def test_an_empty_database_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    db.upgrade(url)
    text = invoke("--database-url", url, "--show-errors", "--show-users").output
    assert "No pages and no messages yet: add a page with `flowc page add`." in text
    assert "Recent errors\n  None in this window." in text
    found = json.loads(invoke("--database-url", url, "--format", "json", "--since", "1w2d").output)
    assert (found["schema_version"], found["pages"], found["flows"]) == (1, [], None)
    assert found["window"]["seconds"] == 9 * 86_400


# ----------------------------------------------------------------------------- end to end


def _receipt(psid: str, kind: str, **body: Any) -> dict[str, Any]:
    stamp = wh.now_ms()
    return {
        "sender": {"id": psid},
        "recipient": {"id": PAGE_ID},
        "timestamp": stamp,
        kind: {"watermark": stamp, **body},
    }


@pytest.mark.parametrize("db_url", BACKENDS, indirect=True)
def test_after_a_conversation_over_http_the_monitor_shows_the_real_counts(
    live: Live,  # noqa: F811 (the fixture imported above)
) -> None:
    lead, gone = "2000000000000001", "5300"
    # The lead-generation conversation, start to end.
    assert live.say(lead, "I'm interested in a demo").status_code == 200
    live.graph.sent(lead, 2)
    assert live.say(lead, "Ada").status_code == 200
    live.graph.sent(lead, 4)
    tap = wh.quick_reply_event(ADA, psid=lead, page_id=PAGE_ID)
    assert live.post(wh.envelope(tap, page_id=PAGE_ID)).status_code == 200
    live.graph.sent(lead, 6)
    # Someone Meta cannot reach: both messages of the flow's first turn fail with 551.
    live.graph.fail(code=551, psid=gone)
    assert live.say(gone, "pricing").status_code == 200
    out = live.rows_when(
        "message_log", lambda rows: len(rows) == 8 and settled(rows), direction="outbound"
    )
    assert len(out) == 8
    # The lead read everything.
    assert live.post(wh.envelope(_receipt(lead, "read"), page_id=PAGE_ID)).status_code == 200
    read = live.rows_when(
        "message_log",
        lambda rows: all(r.status == "read" for r in rows),
        psid=lead,
        direction="outbound",
    )
    assert [r.status for r in read] == ["read"] * 6
    events = live.rows_when("webhook_events", lambda rows: all(r.processed_at for r in rows))
    assert len(events) == 5 and all(e.processed_at for e in events)

    args = ["--format", "json", "--database-url", live.db_url, "--since", "1h"]
    result = invoke(*args, "--show-flows", "--show-errors", "--show-users")
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)

    assert found["schema_version"] == 1
    [page] = found["pages"]
    assert (page["page_id"], page["health"]) == (PAGE_ID, "ok")
    assert page["messages"] == {"inbound": 4, "outbound": 8, "failed": 2, "pending_now": 0}
    assert page["delivery"] == {
        "sent": 6,
        "delivered": 6,
        "read": 6,
        "delivery_rate": 1.0,
        "read_rate": 1.0,
    }
    assert [(f["code_text"], f["kind"], f["count"]) for f in page["failures"]] == [
        ("551", "unreachable", 2)
    ]
    webhook = page["webhook"]
    assert (webhook["received"], webhook["failed"], webhook["pending_now"]) == (5, 0, 0)
    lag = webhook["lag_ms"]
    assert 0 <= lag["p50"] <= lag["p95"] <= lag["max"]
    assert page["conversations"] == {"active": 2, "waiting": 1, "handed_over": 0}

    lead_flow = next(f for f in found["flows"] if f["flow_id"] == LEAD)
    assert lead_flow == flow(
        LEAD,
        starts=2,
        ends=1,
        completion_rate=0.5,
        waiting_now=1,
        drop_off=[{"step": "collect_name", "waiting": 1}],
    )
    others = [f for f in found["flows"] if f["flow_id"] != LEAD]
    assert others and all(f["starts"] == 0 for f in others)

    # Newest first: the question, then the greeting before it, with their `.flow` lines.
    path = ROOT / "flows" / "lead_generation.flow"
    lines = path.read_text(encoding="utf-8").splitlines()
    greeting = 1 + next(n for n, line in enumerate(lines) if f'say "{GREAT}"' in line)
    question = 1 + next(n for n, line in enumerate(lines) if f'ask "{NAME_Q}"' in line)
    assert [(e["kind"], e["psid"], e["code"], e["source"]) for e in found["errors"]] == [
        ("send_failed", gone, 551, f"{path}:{question}"),
        ("send_failed", gone, 551, f"{path}:{greeting}"),
    ]
    assert [
        (u["psid"], u["messages_in"], u["messages_out"], u["step"]) for u in found["users"]
    ] == [
        (lead, 3, 6, None),
        (gone, 1, 2, "collect_name"),
    ]
