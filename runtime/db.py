"""Database connections: URL handling, engine creation (SQLite pragmas) and Alembic migrations.

A SQLite file is the default; PostgreSQL is chosen by URL. Alembic is configured from code
(no alembic.ini needed), with its scripts in the repository's `migrations/` folder. To write a
new migration after changing runtime/tables.py, let Alembic compare a database at the current
head with the tables, then edit the generated file in migrations/versions/:

    .venv/bin/python -c "from alembic import command; from runtime import db; \\
        url = 'sqlite:////tmp/rev.db'; db.upgrade(url); \\
        command.revision(db.alembic_config(url), 'what changed', autogenerate=True, rev_id='0002')"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported inside the functions that migrate: it costs ~200 ms to import, and
# `flowc chat` or the server's hot path never need it.

#: Used when neither `--database-url` nor FLOW_DATABASE_URL is given: a file in the CWD.
DEFAULT_DATABASE_URL = "sqlite:///flowlang.db"

#: The Alembic scripts (env.py and versions/) of this checkout.
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

# How long a SQLite writer waits for another one before giving up with "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 5000
# Address space (not memory) for memory-mapped reads of a SQLite file; the OS shares the pages.
SQLITE_MMAP_BYTES = 1 << 30


class DbError(Exception):
    """A database problem, explained in words a flow author can act on."""


def normalize_url(url: str) -> str:
    """Return a SQLAlchemy URL: Postgres URLs get the psycopg driver, a bare path is SQLite.

    `postgres://…` and `postgresql://…` (as hosting providers hand them out) become
    `postgresql+psycopg://…`; `bot.db` or `/data/bot.db` become `sqlite:///…`."""
    url = url.strip()
    if "://" not in url:
        return f"sqlite:///{url}"
    scheme, rest = url.split("://", 1)
    if scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg://{rest}"
    return url


def display_url(url: str) -> str:
    """The URL with its password masked, for messages and logs."""
    try:
        return make_url(normalize_url(url)).render_as_string(hide_password=True)
    except exc.ArgumentError:
        return "<invalid database URL>"


def dumps(value: Any) -> str:
    """Serialize a JSON column: compact, UTF-8 kept as is, and no NaN (PostgreSQL rejects it)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run while one writer commits; NORMAL only syncs at checkpoints, which
    # keeps the file consistent after a power loss (the last commits may be lost, never torn).
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Reads through a memory map skip a pread() per page: with a million conversations
        # this keeps load+save latency flat (B5). Writes still go through the WAL.
        cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
    finally:
        cursor.close()


def create_engine_for(url: str | None = None, **kwargs: Any) -> Engine:
    """Create the engine for `url` (default: the SQLite file `flowlang.db`).

    SQLite connections get WAL, synchronous=NORMAL, a busy timeout and foreign keys on every
    connect. JSON columns are written compactly. Extra keyword arguments go to SQLAlchemy's
    `create_engine`. Raises `DbError` for a URL that cannot be used."""
    try:
        sa_url = make_url(normalize_url(url or DEFAULT_DATABASE_URL))
    except exc.ArgumentError:
        raise DbError(
            f"{url!r} is not a database URL (expected e.g. {DEFAULT_DATABASE_URL})"
        ) from None
    kwargs.setdefault("json_serializer", dumps)
    try:
        engine = create_engine(sa_url, **kwargs)
    except (exc.ArgumentError, exc.NoSuchModuleError, ImportError) as e:
        raise DbError(f"cannot use {display_url(str(sa_url))}: {e}") from e
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def alembic_config(url: str | None = None) -> Config:
    """An Alembic Config for this checkout's migrations, built without alembic.ini."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Kept out of the ini-style options: '%' in URLs would trip configparser interpolation.
    config.attributes["url"] = url
    return config


def head_revision() -> str:
    """The newest migration revision in this checkout."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise DbError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def current_revision(url: str | None = None) -> str | None:
    """The revision the database at `url` is at (None when it was never migrated)."""
    if _missing_sqlite_file(url):
        return None  # connecting would create an empty file just to say it is empty
    engine = create_engine_for(url)
    try:
        with engine.connect() as connection:
            return _revision(connection)
    except exc.SQLAlchemyError as e:
        raise DbError(_explain(url, e)) from e
    finally:
        engine.dispose()


def upgrade(url: str | None = None, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate the database at `url` to `revision` (default: the newest).

    Returns the revisions (before, after). Raises `DbError` when the database cannot be
    reached or a migration fails."""
    from alembic import command

    return _run(url, lambda config: command.upgrade(config, revision))


def downgrade(url: str | None = None, revision: str = "base") -> tuple[str | None, str | None]:
    """Migrate the database at `url` down to `revision` (default: drop everything)."""
    from alembic import command

    return _run(url, lambda config: command.downgrade(config, revision))


def _run(url: str | None, action: Any) -> tuple[str | None, str | None]:
    engine = create_engine_for(url)
    try:
        with engine.connect() as connection:
            before = _revision(connection)
            config = alembic_config(url)
            config.attributes["connection"] = connection
            action(config)
            connection.commit()
            after = _revision(connection)
        return before, after
    except exc.SQLAlchemyError as e:
        raise DbError(_explain(url, e)) from e
    finally:
        engine.dispose()


def _revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _missing_sqlite_file(url: str | None) -> bool:
    try:
        sa_url = make_url(normalize_url(url or DEFAULT_DATABASE_URL))
    except exc.ArgumentError:
        return False
    name = sa_url.database
    in_memory = not name or name == ":memory:" or name.startswith("file:")
    return sa_url.get_backend_name() == "sqlite" and not in_memory and not Path(name).exists()


def _explain(url: str | None, error: exc.SQLAlchemyError) -> str:
    where = display_url(url or DEFAULT_DATABASE_URL)
    detail = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    if isinstance(error, exc.OperationalError):
        return f"cannot open the database at {where}: {detail}"
    return f"database error at {where}: {detail}"


def require_head(engine: Engine) -> None:
    """Raise `DbError` unless the database behind `engine` is migrated to the newest revision."""
    where = display_url(engine.url.render_as_string(hide_password=True))
    try:
        with engine.connect() as connection:
            current = _revision(connection)
    except exc.SQLAlchemyError as e:
        raise DbError(_explain(where, e)) from e
    head = head_revision()
    if current != head:
        state = "is empty" if current is None else f"is at revision {current}"
        raise DbError(
            f"the database at {where} {state}, this Flowlang needs revision {head}: "
            "run `flowc db upgrade` with the same database URL"
        )
