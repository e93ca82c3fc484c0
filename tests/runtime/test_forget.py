"""Erasing a person's data: `runtime.forget.forget_user` and `flowc user forget`, on SQLite
and PostgreSQL. (The HTTP endpoint is tested in tests/server/test_admin_users.py.)"""

from __future__ import annotations

import pytest
from click.testing import CliRunner, Result
from hygiene_kit import (  # noqa: F401 (the *_fixture: fixtures)
    add,
    add_user,
    engine_fixture,
    rows,
    snapshot_all,
)
from sqlalchemy import Engine, event

from flowlang.cli import main
from runtime import db
from runtime.forget import ForgetReport, forget_user, user_data

PAGE = "1000000000000001"
OTHER_PAGE = "1000000000000002"
ADA = "2000000000000001"
GRACE = "2000000000000002"
PERSONAL = ("contacts", "conversations", "message_log", "webhook_events", "flow_events")
EVERY_TABLE_ONCE = ForgetReport(
    contacts=1,
    conversations=1,
    message_log=2,
    webhook_events=2,
    flow_events=1,
    outbox_leases=1,
)


def flowc(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def others(engine: Engine) -> dict:
    """Everything but Ada's rows on PAGE."""
    return {
        table: [r for r in found if (r.get("page_id"), r.get("psid")) != (PAGE, ADA)]
        for table, found in snapshot_all(engine).items()
    }


@pytest.fixture
def people(engine: Engine) -> Engine:
    """Ada and Grace on PAGE, and someone with Ada's PSID on another page (a PSID is only
    unique per page), each with rows in every table; plus a page-level event."""
    add_user(engine, PAGE, ADA)
    add_user(engine, PAGE, GRACE)
    add_user(engine, OTHER_PAGE, ADA)
    add(engine, "webhook_events", page_id=PAGE, psid=None, kind="policy_enforcement")
    return engine


def test_forget_erases_every_row_of_the_person_and_nothing_else(people: Engine) -> None:
    kept = others(people)
    assert user_data(people, PAGE, ADA) == EVERY_TABLE_ONCE

    report = forget_user(people, PAGE, ADA)

    assert report == EVERY_TABLE_ONCE
    assert report.total == 8
    for table in (*PERSONAL, "outbox_leases"):
        assert rows(people, table, page_id=PAGE, psid=ADA) == [], table
    assert snapshot_all(people) == kept
    assert user_data(people, PAGE, ADA) == ForgetReport()


def test_pending_outbound_messages_are_gone_so_they_are_never_sent(people: Engine) -> None:
    assert rows(people, "message_log", psid=ADA, page_id=PAGE, status="pending")
    forget_user(people, PAGE, ADA)
    # What the sender loads: pending outbound rows of the conversation.
    assert rows(people, "message_log", page_id=PAGE, psid=ADA, status="pending") == []
    assert len(rows(people, "message_log", page_id=PAGE, psid=GRACE, status="pending")) == 1


def test_forgetting_an_unknown_person_changes_nothing(people: Engine) -> None:
    before = snapshot_all(people)
    report = forget_user(people, PAGE, "9999")
    assert report == ForgetReport()
    assert report.total == 0
    assert snapshot_all(people) == before


def test_forget_is_one_transaction(people: Engine) -> None:
    """A failure on the fifth table leaves the first four untouched."""
    before = snapshot_all(people)

    def fail_on_flow_events(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("DELETE FROM FLOW_EVENTS"):
            raise RuntimeError("the database went away")

    event.listen(people, "before_cursor_execute", fail_on_flow_events)
    try:
        with pytest.raises(RuntimeError, match="went away"):
            forget_user(people, PAGE, ADA)
    finally:
        event.remove(people, "before_cursor_execute", fail_on_flow_events)
    assert snapshot_all(people) == before


# ----------------------------------------------------------------------------- the command


def test_flowc_user_forget_with_yes_erases_and_says_what(
    people: Engine, database_url: str, snapshot
) -> None:
    kept = others(people)
    result = flowc(
        "user", "forget", "--page-id", PAGE, "--psid", ADA, "--yes", "--database-url", database_url
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == snapshot
    assert snapshot_all(people) == kept


def test_flowc_user_forget_asks_first_and_no_keeps_everything(
    people: Engine, database_url: str, snapshot
) -> None:
    before = snapshot_all(people)
    args = ("user", "forget", "--page-id", PAGE, "--psid", ADA, "--database-url", database_url)
    refused = flowc(*args, input="n\n")
    assert refused.exit_code == 1
    assert refused.stdout == snapshot
    assert snapshot_all(people) == before

    accepted = flowc(*args, input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert "Erased everything stored about user 2000000000000001 on page" in accepted.stdout
    assert user_data(people, PAGE, ADA) == ForgetReport()


def test_flowc_user_forget_of_an_unknown_person_fails_with_one_line(
    people: Engine, database_url: str
) -> None:
    before = snapshot_all(people)
    result = flowc(
        "user", "forget", "--page-id", PAGE, "--psid", "42", "--yes", "--database-url", database_url
    )
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: nothing is stored about user 42 on page 1000000000000001: "
        "check --page-id and --psid\n"
    )
    assert snapshot_all(people) == before


def test_flowc_user_forget_on_a_database_without_tables_fails_with_one_line(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result = flowc("user", "forget", "--page-id", PAGE, "--psid", ADA, "--database-url", url)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "has no Flowlang tables" in result.stderr
    assert not (tmp_path / "empty.db").exists()


def test_flowc_user_forget_on_an_old_schema_says_to_upgrade(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db.upgrade(url, "0002")
    result = flowc("user", "forget", "--page-id", PAGE, "--psid", ADA, "--database-url", url)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "flowc db upgrade" in result.stderr


def test_flowc_lists_the_user_command() -> None:
    result = flowc("--help")
    assert "  user " in result.stdout
    assert "forget" in flowc("user", "--help").stdout
