"""The state store: migrations, `flowc db`, and the store contract on memory, SQLite and PostgreSQL.

SQLite runs on real files in tmp_path. PostgreSQL runs at FLOW_TEST_DATABASE_URL (skipped only
when it is unset), in a schema of its own that is dropped at the end of the session."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dbkit
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from dbkit import pg_schema
from sqlalchemy import func, inspect, select, text

from flowlang import ir
from flowlang.compiler import compile_source
from runtime import db, tables
from runtime.dbcli import db_group
from runtime.state import ConversationState, Frame
from runtime.store import (
    ConcurrentUpdate,
    Contact,
    InMemoryStore,
    SqlStore,
    Store,
    UnstorableState,
)

PG_URL = dbkit.PG_URL
needs_pg = pytest.mark.skipif(not PG_URL, reason="FLOW_TEST_DATABASE_URL is not set")
TABLES = {"conversations", "contacts", "flow_versions", "message_log"}


# ----------------------------------------------------------------------------- databases


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """One migrated schema for the whole session; tests empty its tables before use."""
    if not PG_URL:
        pytest.skip("FLOW_TEST_DATABASE_URL is not set")
    with pg_schema() as url:
        db.upgrade(url)
        yield url


def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file URL in the test's temporary directory."""
    return f"sqlite:///{tmp_path / 'flowlang.db'}"


SQL_BACKENDS = ["sqlite", pytest.param("postgresql", marks=needs_pg)]


@pytest.fixture(params=SQL_BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database (no tables at all) on each SQL backend."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
    else:
        with pg_schema() as url:
            yield url


def migrated(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a migrated database with empty tables on `backend`."""
    if backend == "sqlite":
        url = sqlite_url(tmp_path)
        db.upgrade(url)
        return url
    url = request.getfixturevalue("pg_url")
    engine = db.create_engine_for(url)
    with engine.begin() as conn:
        for table in tables.metadata.sorted_tables:
            conn.execute(table.delete())
    engine.dispose()
    return url


@pytest.fixture(params=SQL_BACKENDS)
def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    """A `SqlStore` on each SQL backend, for what only a database can show."""
    sql = SqlStore.from_url(migrated(request.param, request, tmp_path))
    try:
        yield sql
    finally:
        sql.engine.dispose()


@pytest.fixture(params=["memory", *SQL_BACKENDS])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The same contract on every implementation."""
    if request.param == "memory":
        yield InMemoryStore()
        return
    sql = SqlStore.from_url(migrated(request.param, request, tmp_path))
    try:
        yield sql
    finally:
        sql.engine.dispose()


def row_count(store: SqlStore, table: str) -> int:
    """Rows in a table, counted by the database itself."""
    with store.engine.connect() as conn:
        return conn.execute(
            select(func.count()).select_from(tables.metadata.tables[table])
        ).scalar_one()


# ----------------------------------------------------------------------------- migrations


def test_upgrade_creates_the_schema_of_tables_py(empty_url: str) -> None:
    head = db.head_revision()
    assert db.current_revision(empty_url) is None
    assert db.upgrade(empty_url) == (None, head)
    assert db.current_revision(empty_url) == head
    engine = db.create_engine_for(empty_url)
    try:
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) >= TABLES
            # The migration and runtime/tables.py describe exactly the same schema.
            assert compare_metadata(MigrationContext.configure(conn), tables.metadata) == []
    finally:
        engine.dispose()
    assert db.upgrade(empty_url) == (head, head)  # idempotent


def test_downgrade_removes_every_table(empty_url: str) -> None:
    db.upgrade(empty_url)
    assert db.downgrade(empty_url) == (db.head_revision(), None)
    engine = db.create_engine_for(empty_url)
    try:
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) & TABLES == set()
    finally:
        engine.dispose()


def test_flowc_db_upgrade_and_current(empty_url: str) -> None:
    runner = CliRunner()
    head = db.head_revision()
    before = runner.invoke(db_group, ["current", "--database-url", empty_url])
    assert before.exit_code == 0, before.output
    assert "no Flowlang tables yet" in before.output
    first = runner.invoke(db_group, ["upgrade", "--database-url", empty_url])
    assert first.exit_code == 0, first.output
    assert "Created the tables" in first.output and head in first.output
    # The URL also comes from FLOW_DATABASE_URL, as in production.
    again = runner.invoke(db_group, ["upgrade"], env={"FLOW_DATABASE_URL": empty_url})
    assert again.exit_code == 0, again.output
    assert "up to date" in again.output
    after = runner.invoke(db_group, ["current", "--database-url", empty_url])
    assert after.exit_code == 0 and f"at revision {head} (up to date)" in after.output


def test_flowc_db_upgrade_needs_no_alembic_ini_in_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOW_DATABASE_URL", raising=False)
    result = CliRunner().invoke(db_group, ["upgrade"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "flowlang.db").is_file()  # the default: a SQLite file in the CWD
    assert db.current_revision("flowlang.db") == db.head_revision()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:////nonexistent-dir/sub/flow.db", "cannot open the database at sqlite:"),
        ("postgresql://flow:secret@127.0.0.1:1/none", "cannot open the database at postgresql"),
        ("mysql+nosuchdriver://x/y", "cannot use mysql+nosuchdriver://x/y"),
    ],
)
def test_flowc_db_upgrade_explains_a_bad_database_without_a_traceback(
    url: str, expected: str
) -> None:
    result = CliRunner().invoke(db_group, ["upgrade", "--database-url", url])
    assert result.exit_code == 1
    assert expected in result.output
    assert "Traceback" not in result.output and "secret" not in result.output


def test_store_on_an_unmigrated_database_says_to_upgrade(tmp_path: Path) -> None:
    with pytest.raises(db.DbError, match=r"is empty.*flowc db upgrade"):
        SqlStore.from_url(sqlite_url(tmp_path))


@pytest.mark.parametrize(
    ("given", "normalized"),
    [
        ("postgres://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        (
            "postgresql://u@h:5433/db?sslmode=require",
            "postgresql+psycopg://u@h:5433/db?sslmode=require",
        ),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///bot.db", "sqlite:///bot.db"),
        ("data/bot.db", "sqlite:///data/bot.db"),
        ("/srv/bot.db", "sqlite:////srv/bot.db"),
    ],
)
def test_database_urls_are_normalized(given: str, normalized: str) -> None:
    assert db.normalize_url(given) == normalized


def test_display_url_hides_the_password() -> None:
    shown = db.display_url("postgres://flow:hunter2@db.example.com/flows")
    assert shown == "postgresql+psycopg://flow:***@db.example.com/flows"


def test_sqlite_connections_get_wal_and_the_pragmas(tmp_path: Path) -> None:
    engine = db.create_engine_for(sqlite_url(tmp_path))
    try:
        with engine.connect() as conn:
            pragma = lambda name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
            assert pragma("journal_mode") == "wal"
            assert pragma("synchronous") == 1  # NORMAL
            assert pragma("busy_timeout") == db.SQLITE_BUSY_TIMEOUT_MS
            assert pragma("foreign_keys") == 1
            assert pragma("mmap_size") == db.SQLITE_MMAP_BYTES
    finally:
        engine.dispose()


def test_hot_statements_seek_an_index(sql_store: SqlStore) -> None:
    # Enough rows, with statistics, that a planner would rather scan if it could not seek.
    now = datetime.now(UTC)
    conversation = {c.name: None for c in tables.conversations.columns} | {
        "page_id": "page-1", "status": "idle", "tries": 0, "handed_over": False,
        "variables": {}, "stack": [], "state_version": 1, "version": 1,
        "created_at": now, "updated_at": now,
    }  # fmt: skip
    message = {c.name: None for c in tables.message_log.columns if c.name != "id"} | {
        "page_id": "page-1", "direction": "outbound", "kind": "message", "body": {},
        "status": "read", "created_at": now, "sent_at": now,
    }  # fmt: skip
    with sql_store.engine.begin() as conn:
        users = [str(i) for i in range(3000)]
        conn.execute(tables.conversations.insert(), [conversation | {"psid": u} for u in users])
        # A history of answered messages per user: receipts must not wade through it.
        history = [message | {"psid": u} for u in users[:300] for _ in range(10)]
        conn.execute(tables.message_log.insert(), history)
        conn.execute(text("ANALYZE"))
    plans = sql_store.query_plans()
    sqlite = sql_store.engine.dialect.name == "sqlite"
    primary_key = "sqlite_autoindex_conversations_1" if sqlite else "pk_conversations"
    expected = {
        "load": primary_key,
        "save": primary_key,
        "mark_delivered": "ix_message_log_unacknowledged",
        "mark_read": "ix_message_log_unacknowledged",
    }
    for name, index in expected.items():
        assert index in plans[name], plans[name]
        assert "SCAN" not in plans[name] and "Seq Scan" not in plans[name], plans[name]


# ----------------------------------------------------------------------------- conversations


def rich_state(page_id: str = "page-1", psid: str = "psid-1") -> ConversationState:
    """A state with every field set, nested values, unicode and emoji."""
    return ConversationState(
        page_id=page_id,
        psid=psid,
        flow_id="lead_generation",
        flow_version="sha256:" + "a" * 64,
        step="ask_email",
        position="ask_email.1",
        status="waiting",
        tries=2,
        variables={
            "first_name": "Zoë 👩🏽‍💻",
            "greeting": "こんにちは, Ŝtefan! «ça va?» — 🎉",
            "answer": "{{ 7*7 }}",  # user text is data, stored verbatim
            "score": 3,
            "ratio": 0.25,
            "consent": True,
            "nothing": None,
            "interests": ["pricing", "demo", {"nested": ["deep", 1, None, {"x": "ü"}]}],
        },
        stack=[
            Frame("welcome", "sha256:" + "b" * 64, "menu", "menu.0", "call"),
            Frame("support", "sha256:" + "c" * 64, "ask", "ask.2", "interrupt", "waiting", 1),
        ],
        handed_over=True,
    )


def test_unknown_conversation_loads_as_none(store: Store) -> None:
    assert store.load("page-1", "nobody") is None


def test_round_trip_keeps_every_field(store: Store) -> None:
    state = rich_state()
    saved = store.save(state)
    assert saved.version == 1
    assert state.version == 0  # the caller's object is left alone
    loaded = store.load("page-1", "psid-1")
    assert loaded == saved
    assert loaded is not None and loaded.stack[1].reason == "interrupt"
    assert loaded.variables["first_name"] == "Zoë 👩🏽‍💻"


def test_each_save_bumps_the_version(store: Store) -> None:
    state = store.save(ConversationState("page-1", "psid-1"))
    for expected in range(2, 6):
        state.variables["n"] = expected
        state = store.save(state)
        assert state.version == expected
    loaded = store.load("page-1", "psid-1")
    assert loaded is not None and loaded.version == 5 and loaded.variables == {"n": 5}


def test_stale_save_raises_and_changes_nothing(store: Store) -> None:
    first = store.save(ConversationState("page-1", "psid-1", step="a"))
    newer = store.save(ConversationState("page-1", "psid-1", step="b", version=first.version))
    stale = ConversationState("page-1", "psid-1", step="stale", version=first.version)
    with pytest.raises(ConcurrentUpdate) as raised:
        store.save(stale)
    assert raised.value.expected_version == 1
    assert store.load("page-1", "psid-1") == newer


def test_second_first_save_raises(store: Store) -> None:
    store.save(ConversationState("page-1", "psid-1", step="winner"))
    with pytest.raises(ConcurrentUpdate):
        store.save(ConversationState("page-1", "psid-1", step="loser"))
    loaded = store.load("page-1", "psid-1")
    assert loaded is not None and loaded.step == "winner"


def test_save_of_a_conversation_that_was_never_stored_raises(store: Store) -> None:
    with pytest.raises(ConcurrentUpdate):
        store.save(ConversationState("page-1", "ghost", version=3))
    assert store.load("page-1", "ghost") is None


def test_conversations_are_keyed_by_page_and_user(store: Store) -> None:
    store.save(ConversationState("page-1", "same-psid", step="one"))
    store.save(ConversationState("page-2", "same-psid", step="two"))
    first, second = store.load("page-1", "same-psid"), store.load("page-2", "same-psid")
    assert first is not None and first.step == "one"
    assert second is not None and second.step == "two"


@pytest.mark.parametrize("bad", [{1, 2}, float("nan"), object()])
def test_values_json_cannot_hold_are_refused(store: Store, bad: object) -> None:
    with pytest.raises(UnstorableState, match="conversation state cannot be stored"):
        store.save(ConversationState("page-1", "psid-1", variables={"bad": bad}))
    assert store.load("page-1", "psid-1") is None
    # The store still works afterwards (no half-open transaction left behind).
    assert store.save(ConversationState("page-1", "psid-1")).version == 1


# ----------------------------------------------------------------------------- flow versions

GREET_V1 = """\
flow greet
  when user says "hi"
  step start
    say "Hello!"
    ask "What's your name?" as name
    goto thanks
  step thanks
    say "Thanks {{ name }}"
"""
# v2 renames the step `thanks` (a conversation waiting in v1 still needs v1's step).
GREET_V2 = GREET_V1.replace("thanks", "bye")
OTHER = """\
flow other
  when user says "other"
  step start
    say "Other"
"""


def program(*texts: str) -> ir.FlowProgram:
    """Compile flows given as text into one program."""
    result = compile_source("\n".join(texts), "test.flow")
    assert result.program is not None, [d.message for d in result.diagnostics]
    return result.program


def test_deploy_registers_every_flow_as_current(store: Store) -> None:
    prog = program(GREET_V1, OTHER)
    new = store.deploy(prog)
    expected = {name: flow.content_hash for name, flow in prog.flows.items()}
    assert new == expected
    assert store.current_versions() == expected
    assert store.flow_version("greet", expected["greet"]) == prog.flows["greet"]


def test_redeploying_the_same_program_adds_nothing(store: Store) -> None:
    prog = program(GREET_V1, OTHER)
    store.deploy(prog)
    assert store.deploy(prog) == {}
    assert store.current_versions() == {n: f.content_hash for n, f in prog.flows.items()}
    if isinstance(store, SqlStore):
        assert row_count(store, "flow_versions") == 2


def test_old_version_stays_retrievable_after_a_new_deploy(store: Store) -> None:
    v1, v2 = program(GREET_V1, OTHER), program(GREET_V2, OTHER)
    store.deploy(v1)
    new = store.deploy(v2)
    old_hash, new_hash = v1.flows["greet"].content_hash, v2.flows["greet"].content_hash
    assert old_hash != new_hash
    assert new == {"greet": new_hash}  # `other` did not change
    assert store.current_versions()["greet"] == new_hash
    old = store.flow_version("greet", old_hash)
    assert old == v1.flows["greet"] and "thanks" in old.steps
    if isinstance(store, SqlStore):
        # A fresh store (another process, empty cache) reads it from the database.
        fresh = SqlStore(store.engine)
        assert fresh.flow_version("greet", old_hash) == v1.flows["greet"]
        assert fresh.flow_version("greet", new_hash) == v2.flows["greet"]
        assert row_count(store, "flow_versions") == 3


def test_unknown_versions_and_mismatched_flow_ids_are_none(store: Store) -> None:
    prog = program(GREET_V1)
    store.deploy(prog)
    greet_hash = prog.flows["greet"].content_hash
    assert store.flow_version("greet", "sha256:" + "0" * 64) is None
    assert store.flow_version("other", greet_hash) is None


def test_a_removed_flow_is_no_longer_current_but_still_retrievable(store: Store) -> None:
    both = program(GREET_V1, OTHER)
    store.deploy(both)
    store.deploy(program(GREET_V1))
    assert set(store.current_versions()) == {"greet"}
    other_hash = both.flows["other"].content_hash
    assert store.flow_version("other", other_hash) == both.flows["other"]


def test_moving_lines_keeps_the_version_and_refreshes_positions(store: Store) -> None:
    before = program(GREET_V1)
    after = program("# a comment pushes every line down\n\n" + GREET_V1)
    old, new = before.flows["greet"], after.flows["greet"]
    assert old.content_hash == new.content_hash and old.source.line != new.source.line
    store.deploy(before)
    assert store.deploy(after) == {}
    assert store.flow_version("greet", new.content_hash) == new
    if isinstance(store, SqlStore):
        assert SqlStore(store.engine).flow_version("greet", new.content_hash) == new
        assert row_count(store, "flow_versions") == 1


# ----------------------------------------------------------------------------- contacts


def test_contacts_round_trip_and_update(store: Store) -> None:
    assert store.get_contact("page-1", "psid-1") is None
    fetched = datetime(2020, 5, 17, 8, 30, 15, 123456, tzinfo=UTC)
    store.save_contact(
        Contact(
            "page-1",
            "psid-1",
            "Zoë",
            "Ñúñez 🌵",
            "https://x/p.jpg",
            "es_ES",
            5.5,
            "female",
            fetched,
        )
    )
    assert store.get_contact("page-1", "psid-1") == Contact(
        "page-1", "psid-1", "Zoë", "Ñúñez 🌵", "https://x/p.jpg", "es_ES", 5.5, "female", fetched
    )
    store.save_contact(Contact("page-1", "psid-1", first_name="Zoe"))
    updated = store.get_contact("page-1", "psid-1")
    assert updated is not None and updated.first_name == "Zoe" and updated.last_name is None
    assert updated.fetched_at is not None and updated.fetched_at > fetched
    assert updated.fetched_at.tzinfo is not None
    assert updated.user_variables()["first_name"] == "Zoe"
    assert store.get_contact("page-2", "psid-1") is None


# ----------------------------------------------------------------------------- message log


def test_inbound_messages_are_deduplicated_by_mid(store: Store) -> None:
    first = store.log_inbound("page-1", "psid-1", "text", {"text": "hi 👋"}, mid="m_1")
    assert first is not None
    assert store.log_inbound("page-1", "psid-1", "text", {"text": "hi 👋"}, mid="m_1") is None
    # Without a mid nothing can be deduplicated: both are kept.
    assert store.log_inbound("page-1", "psid-1", "postback", {"payload": "A"}) is not None
    assert store.log_inbound("page-1", "psid-1", "postback", {"payload": "A"}) is not None
    logged = store.messages("page-1", "psid-1")
    assert [m.kind for m in logged] == ["text", "postback", "postback"]
    assert logged[0].body == {"text": "hi 👋"} and logged[0].status == "received"
    assert logged[0].direction == "inbound" and logged[0].id == first


def millis(moment: datetime) -> int:
    """A Messenger watermark for a moment."""
    return int(moment.timestamp() * 1000)


def test_outbound_status_follows_send_delivery_and_read(store: Store) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    ids = [store.log_outbound("page-1", "psid-1", "message", {"text": f"#{i}"}) for i in range(4)]
    other = store.log_outbound("page-1", "psid-2", "message", {"text": "someone else"})
    for i, log_id in enumerate(ids[:3]):
        store.set_status(log_id, "sent", mid=f"m_out_{i}", at=t0 + timedelta(seconds=i))
    store.set_status(other, "sent", mid="m_other", at=t0)
    store.set_status(
        ids[3], "failed", error_code=10, error_subcode=2018278, error_message="outside window"
    )

    def status() -> list[str]:
        return [m.status for m in store.messages("page-1", "psid-1")]

    assert status() == ["sent", "sent", "sent", "failed"]
    # Watermark before anything was sent: nothing changes.
    assert store.mark_delivered("page-1", "psid-1", millis(t0 - timedelta(seconds=1))) == 0
    # The watermark covers #0 and #1; #2 is delivered by its mid.
    assert store.mark_delivered("page-1", "psid-1", millis(t0 + timedelta(seconds=1))) == 2
    assert status() == ["delivered", "delivered", "sent", "failed"]
    assert (
        store.mark_delivered("page-1", "psid-1", millis(t0 - timedelta(days=1)), ["m_out_2"]) == 1
    )
    assert store.mark_read("page-1", "psid-1", millis(t0 + timedelta(seconds=2))) == 3
    assert status() == ["read", "read", "read", "failed"]
    # A late delivery receipt never downgrades a read message (watermarks are idempotent).
    assert store.mark_delivered("page-1", "psid-1", millis(t0 + timedelta(seconds=9))) == 0
    messages = store.messages("page-1", "psid-1")
    assert all(m.read_at is not None and m.delivered_at is not None for m in messages[:3])
    assert messages[0].mid == "m_out_0" and messages[0].sent_at == t0
    failed = messages[3]
    assert (failed.error_code, failed.error_subcode) == (10, 2018278)
    assert failed.error_message == "outside window" and failed.sent_at is None
    # Another user's messages were not touched.
    assert [m.status for m in store.messages("page-1", "psid-2")] == ["sent"]


def test_a_retry_after_a_failure_clears_the_error(store: Store) -> None:
    log_id = store.log_outbound("page-1", "psid-1", "message", {"text": "hello"})
    store.set_status(log_id, "failed", error_code=2, error_message="temporary")
    store.set_status(log_id, "sent", mid="m_1")
    (message,) = store.messages("page-1", "psid-1")
    assert message.status == "sent" and message.error_code is None and message.mid == "m_1"
    assert message.sent_at is not None and message.sent_at.tzinfo is not None


def test_messages_returns_the_latest_oldest_first(store: Store) -> None:
    for i in range(5):
        store.log_inbound("page-1", "psid-1", "text", {"text": str(i)})
    assert [m.body["text"] for m in store.messages("page-1", "psid-1", limit=3)] == ["2", "3", "4"]


def test_unstorable_message_bodies_are_refused(store: Store) -> None:
    with pytest.raises(UnstorableState, match="message body"):
        store.log_outbound("page-1", "psid-1", "message", {"bad": {1, 2}})
    assert store.messages("page-1", "psid-1") == []
