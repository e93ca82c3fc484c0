"""Driver-level inserts (server/rawsql.py) store exactly what SQLAlchemy Core stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text

from runtime import db, tables
from server import rawsql
from server.rawsql import RowInserter

_COLUMNS = ("page_id", "psid", "direction", "mid", "kind", "body", "status", "created_at")
_AT = datetime(2026, 11, 27, 16, 30, 1, 123456, tzinfo=UTC)


def _row(n: int, mid: str | None = None) -> tuple:
    body = {"payload": {"text": f"é {n} 🚀", "quick_replies": [{"title": "Yes"}]}, "tag": None}
    return ("p1", f"u{n % 3}", "outbound", mid, "message", body, "pending", _AT)


def _stored(url: str) -> list[tuple]:
    """The rows as the database holds them (JSON and timestamps as text)."""
    engine = db.create_engine_for(url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT page_id, psid, direction, mid, kind, CAST(body AS TEXT), status, "
                "CAST(created_at AS TEXT) FROM message_log ORDER BY id"
            )
        ).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def test_rows_are_stored_as_sqlalchemy_stores_them(database_url: str) -> None:
    engine = db.create_engine_for(database_url)
    rows = [_row(1), _row(2, mid="m.2")]
    with engine.begin() as conn:
        conn.execute(
            tables.message_log.insert(), [dict(zip(_COLUMNS, r, strict=True)) for r in rows]
        )
    by_core = _stored(database_url)
    with engine.begin() as conn:
        conn.execute(tables.message_log.delete())
        RowInserter(engine, tables.message_log, _COLUMNS).insert(conn, rows)
    assert _stored(database_url) == by_core
    with engine.connect() as conn:  # and they read back the same through SQLAlchemy
        body, created = conn.execute(
            select(tables.message_log.c.body, tables.message_log.c.created_at)
        ).first()
    engine.dispose()
    assert body == rows[0][5]
    assert created.replace(tzinfo=UTC) == _AT


def test_many_rows_keep_their_order_across_statements(database_url: str) -> None:
    engine = db.create_engine_for(database_url)
    count = rawsql.ROWS_PER_STATEMENT * 2 + 7
    rows = [(*_row(n)[:5], {"n": n}, "pending", _AT + timedelta(seconds=n)) for n in range(count)]
    with engine.begin() as conn:
        RowInserter(engine, tables.message_log, _COLUMNS).insert(conn, rows)
    with engine.connect() as conn:
        found = conn.execute(select(tables.message_log.c.body).order_by(tables.message_log.c.id))
        assert [r.body["n"] for r in found] == list(range(count))
    engine.dispose()


def test_a_conflict_suffix_skips_only_the_conflicting_row(database_url: str) -> None:
    engine = db.create_engine_for(database_url)
    inserter = RowInserter(
        engine, tables.message_log, _COLUMNS, suffix="ON CONFLICT (mid) DO NOTHING"
    )
    with engine.begin() as conn:
        inserter.insert(conn, [_row(1, mid="m.1")])
        inserter.insert(conn, [_row(2, mid="m.1"), _row(3), _row(4)])
    assert [(r[1], r[3]) for r in _stored(database_url)] == [
        ("u1", "m.1"),
        ("u0", None),
        ("u1", None),
    ]
    engine.dispose()


def test_returning_gives_the_inserted_rows_only(database_url: str) -> None:
    engine = db.create_engine_for(database_url)
    inserter = RowInserter(
        engine,
        tables.message_log,
        _COLUMNS,
        suffix="ON CONFLICT (mid) DO NOTHING",
        returning=("id", "mid"),
        rows_per_statement=2,
    )
    with engine.begin() as conn:
        first = inserter.insert(conn, [_row(1, mid="m.1")])
        again = inserter.insert(conn, [_row(2, mid="m.1"), _row(3, mid="m.3"), _row(4, mid="m.4")])
    engine.dispose()
    assert [mid for _, mid in first] == ["m.1"]
    assert sorted(mid for _, mid in again) == ["m.3", "m.4"]  # across two statements
