"""Shared by every test folder: pytest puts this folder on sys.path, so `dbkit` imports.

`database_url` is a migrated, empty database on each backend (a SQLite file, and one migrated
PostgreSQL schema per session, emptied for each test; skipped without FLOW_TEST_DATABASE_URL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dbkit
import pytest

from runtime import db, tables

_needs_pg = pytest.mark.skipif(not dbkit.PG_URL, reason="FLOW_TEST_DATABASE_URL is not set")


@pytest.fixture(scope="session")
def pg_migrated_url() -> Iterator[str]:
    """One migrated PostgreSQL schema for the session; `database_url` empties it per test."""
    if not dbkit.PG_URL:
        pytest.skip("FLOW_TEST_DATABASE_URL is not set")
    with dbkit.pg_schema() as url:
        db.upgrade(url)
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=_needs_pg)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'flow.db'}"
        db.upgrade(url)
        return url
    url = request.getfixturevalue("pg_migrated_url")
    engine = db.create_engine_for(url)
    try:
        with engine.begin() as conn:
            for table in reversed(tables.metadata.sorted_tables):
                conn.execute(table.delete())
    finally:
        engine.dispose()
    return url
