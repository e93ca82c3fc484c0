"""Helpers of the data hygiene tests (test_cleanup.py, test_forget.py): a migrated database on
each backend, rows written straight into its tables, and the rows read back."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dbkit
import pytest
from sqlalchemy import Engine, select

from runtime import db, tables

needs_pg = pytest.mark.skipif(not dbkit.PG_URL, reason="FLOW_TEST_DATABASE_URL is not set")
BACKENDS = ["sqlite", pytest.param("postgresql", marks=needs_pg)]

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)
RECENT = NOW - timedelta(days=1)
CUTOFF = NOW - timedelta(days=30)

_keys = itertools.count(1)


# The fixtures are registered under short names (`name=`), so that a test module can import
# them without its parameters shadowing the imported functions.


@pytest.fixture(name="engine")
def engine_fixture(database_url: str) -> Iterator[Engine]:
    """An engine on `database_url`."""
    engine = db.create_engine_for(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def add(engine: Engine, table: str, **values: Any) -> None:
    """Insert one row, with defaults for the columns a test does not care about."""
    defaults: dict[str, dict[str, Any]] = {
        "webhook_events": {
            "event_key": f"key-{next(_keys)}",
            "kind": "message",
            "payload": {"message": {"text": "hello"}},
            "received_at": OLD,
            "status": "done",
            "attempts": 0,
        },
        "message_log": {
            "direction": "inbound",
            "kind": "text",
            "body": {"text": "hello"},
            "status": "received",
            "created_at": OLD,
        },
        "flow_events": {"flow_id": "welcome", "kind": "start", "at": OLD},
        "conversations": {
            "status": "idle",
            "tries": 0,
            "handed_over": False,
            "variables": {"lead_name": "Ada"},
            "stack": [],
            "state_version": 1,
            "version": 1,
            "created_at": OLD,
            "updated_at": OLD,
        },
        "contacts": {"first_name": "Ada", "fetched_at": OLD},
        "outbox_leases": {"owner": "instance-1", "expires_at": OLD},
    }
    with engine.begin() as conn:
        conn.execute(tables.metadata.tables[table].insert(), {**defaults[table], **values})


def add_user(engine: Engine, page_id: str, psid: str, when: datetime = OLD) -> None:
    """A person with a row in every table that holds personal data (two of the logs)."""
    who = {"page_id": page_id, "psid": psid}
    add(engine, "contacts", **who, fetched_at=when)
    add(engine, "conversations", **who, updated_at=when)
    add(engine, "message_log", **who, created_at=when)
    add(engine, "message_log", **who, created_at=when, direction="outbound", status="pending")
    add(engine, "webhook_events", **who, received_at=when)
    add(engine, "webhook_events", **who, received_at=when, status="pending")
    add(engine, "flow_events", **who, at=when)
    add(engine, "outbox_leases", **who)


def rows(engine: Engine, table: str, **where: Any) -> list[dict[str, Any]]:
    """The rows of a table (optionally those matching `where`), in key order, as dicts."""
    t = tables.metadata.tables[table]
    query = select(t).where(*(t.c[k] == v for k, v in where.items()))
    with engine.connect() as conn:
        found = conn.execute(query.order_by(*t.primary_key.columns))
        return [dict(r._mapping) for r in found]


def snapshot_all(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table."""
    return {name: rows(engine, name) for name in tables.metadata.tables}
