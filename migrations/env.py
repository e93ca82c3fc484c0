"""Alembic environment: runs the migrations in versions/ against the runtime's database.

Configured from code by runtime/db.py (`alembic_config`), which passes either an open
connection (`config.attributes["connection"]`) or a URL (`config.attributes["url"]`)."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from runtime import tables
from runtime.db import create_engine_for, normalize_url

config = context.config
target_metadata = tables.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    """Print the SQL instead of running it (`--sql`)."""
    context.configure(
        url=normalize_url(config.attributes.get("url") or "sqlite:///flowlang.db"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Migrate through the given connection, or a new engine for the given URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    engine = create_engine_for(config.attributes.get("url"))
    try:
        with engine.begin() as new_connection:
            _configure(new_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
