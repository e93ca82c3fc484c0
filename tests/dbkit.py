"""Test databases: a throw-away PostgreSQL schema per use, at FLOW_TEST_DATABASE_URL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import make_url, text

from runtime import db

#: The PostgreSQL the tests may use (CI sets it in .ci/run); PostgreSQL tests skip without it.
PG_URL = os.environ.get("FLOW_TEST_DATABASE_URL")


@contextmanager
def pg_schema(prefix: str = "flowtest") -> Iterator[str]:
    """A new, empty PostgreSQL schema, dropped afterwards; yields a URL whose search_path
    points at it."""
    assert PG_URL is not None
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = db.create_engine_for(PG_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(db.normalize_url(PG_URL)).update_query_dict(
            {"options": f"-csearch_path={schema}"}
        )
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
