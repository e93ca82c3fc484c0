"""Deleting old data: `runtime.cleanup` and `flowc db cleanup`, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hygiene_kit import (  # noqa: F401 (the *_fixture: fixtures)
    CUTOFF,
    OLD,
    RECENT,
    add,
    engine_fixture,
    rows,
    snapshot_all,
)
from sqlalchemy import Engine, event

from flowlang.cli import main
from runtime.cleanup import cleanup, parse_duration

PAGE = "1000000000000001"
TABLES = ("webhook_events", "message_log", "flow_events")


def flowc(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# ----------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("2w", timedelta(weeks=2)),
        ("1w2d", timedelta(days=9)),
        (" 36H ", timedelta(hours=36)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["30", "d", "30x", "30 days", "-1d", "1.5d", "", "0d", "0h0m"])
def test_what_is_not_a_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# ----------------------------------------------------------------------------- what goes


def seed(engine: Engine) -> None:
    """Old and recent rows of every kind; the psid names what must happen to each row."""
    for status in ("done", "ignored", "failed", "unknown_page"):
        add(engine, "webhook_events", page_id=PAGE, psid="goes", status=status)
    add(engine, "webhook_events", page_id=PAGE, psid=None, status="done")  # page-level, old
    add(engine, "webhook_events", page_id=PAGE, psid="stays", status="pending")
    add(engine, "webhook_events", page_id=PAGE, psid="stays", received_at=RECENT)
    for direction, status in [
        ("inbound", "received"),
        ("outbound", "sent"),
        ("outbound", "delivered"),
        ("outbound", "read"),
        ("outbound", "failed"),
    ]:
        add(engine, "message_log", page_id=PAGE, psid="goes", direction=direction, status=status)
    add(engine, "message_log", page_id=PAGE, psid="stays", direction="outbound", status="pending")
    add(engine, "message_log", page_id=PAGE, psid="stays", created_at=RECENT)
    add(engine, "flow_events", page_id=PAGE, psid="goes", kind="start")
    add(engine, "flow_events", page_id=PAGE, psid="goes", kind="fault")
    add(engine, "flow_events", page_id=PAGE, psid="stays", at=RECENT)
    # Conversations and profiles are kept by default, however old.
    add(engine, "conversations", page_id=PAGE, psid="stays")
    add(engine, "contacts", page_id=PAGE, psid="stays")


def test_cleanup_deletes_what_finished_before_the_cutoff_and_keeps_the_rest(
    engine: Engine,
) -> None:
    seed(engine)
    before = snapshot_all(engine)

    report = cleanup(engine, CUTOFF)

    assert report.counts == {"webhook_events": 5, "message_log": 5, "flow_events": 2}
    assert report.total == 12
    after = snapshot_all(engine)
    for table in TABLES:
        assert {r["psid"] for r in after[table]} == {"stays"}, table
    assert after["conversations"] == before["conversations"]
    assert after["contacts"] == before["contacts"]


def test_dry_run_counts_the_same_rows_and_deletes_nothing(engine: Engine) -> None:
    seed(engine)
    before = snapshot_all(engine)
    dry = cleanup(engine, CUTOFF, dry_run=True)
    assert snapshot_all(engine) == before
    assert dry.dry_run
    assert dry.counts == cleanup(engine, CUTOFF).counts


def test_rows_are_deleted_in_batches_of_batch_size(engine: Engine) -> None:
    """12 old finished messages between kept ones, 5 per batch: three DELETE statements,
    each in a transaction of its own, and the pending rows among them survive."""
    for i in range(12):
        add(engine, "message_log", page_id=PAGE, psid="goes", status="sent")
        if i % 4 == 0:
            add(engine, "message_log", page_id=PAGE, psid="stays", status="pending")
    deletes: list[str] = []
    commits: list[int] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("DELETE FROM MESSAGE_LOG"):
            deletes.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    event.listen(engine, "commit", lambda conn: commits.append(len(deletes)))
    try:
        report = cleanup(engine, CUTOFF, batch_size=5)
    finally:
        event.remove(engine, "before_cursor_execute", record)

    assert report.counts["message_log"] == 12
    assert len(deletes) == 3
    assert [n for n in commits if n][:3] == [1, 2, 3]  # a commit after every batch
    assert [r["psid"] for r in rows(engine, "message_log")] == ["stays"] * 3


def test_a_batch_exactly_full_ends_with_an_empty_look(engine: Engine) -> None:
    for _ in range(4):
        add(engine, "flow_events", page_id=PAGE, psid="goes")
    assert cleanup(engine, CUTOFF, batch_size=2).counts["flow_events"] == 4
    assert rows(engine, "flow_events") == []


# ----------------------------------------------------------------------------- --idle-users


def seed_people(engine: Engine) -> None:
    """Conversations and profiles; the psid says whether each should go."""
    add(engine, "conversations", page_id=PAGE, psid="idle-goes")
    add(engine, "contacts", page_id=PAGE, psid="idle-goes")
    add(engine, "conversations", page_id=PAGE, psid="waiting-stays", status="waiting")
    add(engine, "contacts", page_id=PAGE, psid="waiting-stays")
    add(engine, "conversations", page_id=PAGE, psid="handed-stays", handed_over=True)
    add(engine, "contacts", page_id=PAGE, psid="handed-stays")
    add(engine, "conversations", page_id=PAGE, psid="recent-stays", updated_at=RECENT)
    add(engine, "contacts", page_id=PAGE, psid="recent-stays")  # fetched long ago
    # Idle and old, but they just wrote: an event waits to be processed.
    add(engine, "conversations", page_id=PAGE, psid="writing-stays")
    add(engine, "webhook_events", page_id=PAGE, psid="writing-stays", status="pending")
    add(engine, "contacts", page_id=PAGE, psid="profile-only-goes")
    add(engine, "contacts", page_id=PAGE, psid="new-profile-stays", fetched_at=RECENT)
    # The same PSID on another page is another person, with a conversation in progress.
    add(engine, "contacts", page_id="other-page", psid="idle-goes")
    add(engine, "conversations", page_id="other-page", psid="idle-goes", status="waiting")


def test_idle_users_deletes_only_idle_untouched_conversations_and_orphan_profiles(
    engine: Engine,
) -> None:
    seed_people(engine)
    report = cleanup(engine, CUTOFF, idle_users=True, batch_size=2)
    assert report.counts["conversations"] == 1
    assert report.counts["contacts"] == 2
    kept = snapshot_all(engine)
    assert sorted((r["page_id"], r["psid"]) for r in kept["conversations"]) == [
        (PAGE, "handed-stays"),
        (PAGE, "recent-stays"),
        (PAGE, "waiting-stays"),
        (PAGE, "writing-stays"),
        ("other-page", "idle-goes"),
    ]
    assert sorted((r["page_id"], r["psid"]) for r in kept["contacts"]) == [
        (PAGE, "handed-stays"),
        (PAGE, "new-profile-stays"),
        (PAGE, "recent-stays"),
        (PAGE, "waiting-stays"),
        ("other-page", "idle-goes"),
    ]


def test_idle_users_dry_run_counts_what_a_real_run_deletes(engine: Engine) -> None:
    seed_people(engine)
    before = snapshot_all(engine)
    dry = cleanup(engine, CUTOFF, idle_users=True, dry_run=True)
    assert snapshot_all(engine) == before
    assert dry.counts == cleanup(engine, CUTOFF, idle_users=True).counts


def test_without_idle_users_no_conversation_or_profile_goes(engine: Engine) -> None:
    seed_people(engine)
    before = snapshot_all(engine)
    report = cleanup(engine, CUTOFF)
    assert set(report.counts) == set(TABLES)
    after = snapshot_all(engine)
    assert after["conversations"] == before["conversations"]
    assert after["contacts"] == before["contacts"]


def test_a_naive_cutoff_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="timezone"):
        cleanup(engine, CUTOFF.replace(tzinfo=None))


# ----------------------------------------------------------------------------- the command


def _dated(text: str) -> str:
    """The output with the cutoff (which depends on the clock) and the URL replaced."""
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "<cutoff>", text)
    return re.sub(r"from \S+ what", "from <database> what", text)


def test_flowc_db_cleanup_prints_the_counts_per_table(
    engine: Engine, database_url: str, snapshot
) -> None:
    seed(engine)
    dry = flowc("db", "cleanup", "--older-than", "30d", "--dry-run", "--database-url", database_url)
    assert dry.exit_code == 0, dry.output
    assert _dated(dry.stdout) == snapshot(name="dry-run")
    assert len(rows(engine, "message_log")) == 7

    earliest = datetime.now(UTC) - timedelta(days=30)
    real = flowc("db", "cleanup", "--older-than", "30d", "--database-url", database_url)
    latest = datetime.now(UTC) - timedelta(days=30)
    assert real.exit_code == 0, real.output
    assert _dated(real.stdout) == snapshot(name="deleted")
    assert len(rows(engine, "message_log")) == 2
    shown = re.search(r"before (\S+ \S+) UTC", real.stdout)
    assert shown is not None
    cutoff = datetime.strptime(shown.group(1), "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    assert earliest.replace(second=0, microsecond=0) <= cutoff <= latest


def test_flowc_db_cleanup_idle_users_lists_conversations_and_profiles(
    engine: Engine, database_url: str
) -> None:
    seed_people(engine)
    result = flowc(
        "db", "cleanup", "--older-than", "4w", "--idle-users", "--database-url", database_url
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"^  conversations\s+1  idle conversations", result.stdout, re.M)
    assert re.search(r"^  contacts\s+2  profiles of people", result.stdout, re.M)


def test_flowc_db_cleanup_refuses_a_bad_duration(database_url: str) -> None:
    result = flowc("db", "cleanup", "--older-than", "30x", "--database-url", database_url)
    assert result.exit_code == 2
    assert "'30x' is not a duration" in result.stderr


def test_flowc_db_cleanup_needs_older_than(database_url: str) -> None:
    result = flowc("db", "cleanup", "--database-url", database_url)
    assert result.exit_code == 2
    assert "--older-than" in result.stderr


def test_flowc_db_cleanup_on_a_database_without_tables_fails_with_one_line(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    result = flowc("db", "cleanup", "--older-than", "30d", "--database-url", url)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "has no Flowlang tables" in result.stderr
