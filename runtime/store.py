"""Persistence for the runtime: conversation state, deployed flow versions, contacts, message log.

Two implementations of one contract: `InMemoryStore` (for the engine's tests, `flowc chat` and
`flowc test`) and `SqlStore` (SQLite or PostgreSQL through SQLAlchemy Core). Conversation
state uses optimistic concurrency: `save` succeeds only if nobody saved the conversation since
it was loaded, otherwise it raises `ConcurrentUpdate` and the caller reloads and retries.

The hot paths (load, save, message log) run statements built once at import time, so
SQLAlchemy compiles each of them once and caches it; no ORM objects are created per event."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import pydantic
from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    event,
    exc,
    false,
    func,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from flowlang import ir
from runtime import db, tables
from runtime.state import ConversationState, Frame

log = logging.getLogger(__name__)

Direction = Literal["inbound", "outbound"]
MessageStatus = Literal["received", "pending", "sent", "delivered", "read", "failed"]


class ConcurrentUpdate(Exception):
    """The conversation was saved by someone else since it was loaded: reload and retry."""

    def __init__(self, page_id: str, psid: str, expected_version: int) -> None:
        super().__init__(
            f"conversation ({page_id}, {psid}) is no longer at version {expected_version}"
        )
        self.page_id = page_id
        self.psid = psid
        self.expected_version = expected_version


class UnstorableState(ValueError):
    """A conversation state or message body that cannot be stored as JSON (e.g. a set, NaN)."""


@dataclass
class Contact:
    """A user's Messenger profile as fetched from the Graph API (any field may be missing)."""

    page_id: str
    psid: str
    first_name: str | None = None
    last_name: str | None = None
    profile_pic: str | None = None
    locale: str | None = None
    timezone: float | None = None
    gender: str | None = None
    fetched_at: datetime | None = None

    def user_variables(self) -> dict[str, Any]:
        """The `user.*` namespace for templates."""
        return {
            "first_name": self.first_name,
            "last_name": self.last_name,
            "profile_pic": self.profile_pic,
            "locale": self.locale,
            "timezone": self.timezone,
            "gender": self.gender,
        }


@dataclass
class LoggedMessage:
    """One row of the message log."""

    id: int
    page_id: str
    psid: str
    direction: Direction
    mid: str | None
    kind: str
    body: dict[str, Any]
    status: MessageStatus
    created_at: datetime
    error_code: int | None = None
    error_subcode: int | None = None
    error_message: str | None = None
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    read_at: datetime | None = None


# ----------------------------------------------------------------------------- the contract


class ConversationStore(Protocol):
    """Load and save conversation state with optimistic concurrency."""

    def load(self, page_id: str, psid: str) -> ConversationState | None:
        """The saved state of a conversation, or None if it never saved one."""
        ...

    def save(self, state: ConversationState) -> ConversationState:
        """Save `state` and return it with `version + 1`.

        `state.version` must be the version that was loaded (0 for a new conversation);
        raises `ConcurrentUpdate` when the stored version differs (or, for 0, when the
        conversation already exists), and `UnstorableState` when a value is not JSON."""
        ...


class FlowVersionStore(Protocol):
    """Every deployed version of every flow, so old conversations finish on their version."""

    def deploy(self, program: ir.FlowProgram) -> dict[str, str]:
        """Register the program's flow versions and make them current.

        Returns {flow_id: content_hash} of the versions that were not known before."""
        ...

    def flow_version(self, flow_id: str, content_hash: str) -> ir.Flow | None:
        """A deployed version of a flow, current or not; None if unknown."""
        ...

    def current_versions(self) -> dict[str, str]:
        """{flow_id: content_hash} of the current version of every deployed flow."""
        ...


class ContactStore(Protocol):
    """User profiles."""

    def get_contact(self, page_id: str, psid: str) -> Contact | None:
        """The stored profile, or None."""
        ...

    def save_contact(self, contact: Contact) -> None:
        """Insert or replace a profile (`fetched_at` defaults to now)."""
        ...


class MessageLogStore(Protocol):
    """Inbound and outbound messages with delivery status."""

    def log_inbound(
        self, page_id: str, psid: str, kind: str, body: dict[str, Any], *, mid: str | None = None
    ) -> int | None:
        """Log a received message; returns its id, or None when `mid` was already logged
        (Messenger redelivers webhooks: None means "duplicate, skip it")."""
        ...

    def log_outbound(self, page_id: str, psid: str, kind: str, body: dict[str, Any]) -> int:
        """Log a message about to be sent (status "pending"); returns its id."""
        ...

    def set_status(
        self,
        log_id: int,
        status: MessageStatus,
        *,
        mid: str | None = None,
        error_code: int | None = None,
        error_subcode: int | None = None,
        error_message: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """Record the outcome of a send. For "sent", pass `at` = when the Send API request
        started (delivery/read watermarks are compared with it) and the returned `mid`."""
        ...

    def mark_delivered(
        self, page_id: str, psid: str, watermark: int, mids: Sequence[str] = ()
    ) -> int:
        """Messages sent at or before `watermark` (ms since the epoch), or listed in `mids`,
        are delivered. Returns how many rows changed."""
        ...

    def mark_read(self, page_id: str, psid: str, watermark: int) -> int:
        """Messages sent at or before `watermark` (ms since the epoch) are read."""
        ...

    def messages(self, page_id: str, psid: str, limit: int = 100) -> list[LoggedMessage]:
        """The last `limit` messages of a conversation, oldest first."""
        ...


class Store(ConversationStore, FlowVersionStore, ContactStore, MessageLogStore, Protocol):
    """Everything the runtime persists."""


# ----------------------------------------------------------------------------- helpers


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back naive (they were written in UTC); PostgreSQL in its zone."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def watermark_time(watermark: int) -> datetime:
    """A Messenger watermark (milliseconds since the epoch) as a UTC datetime."""
    return datetime.fromtimestamp(watermark / 1000, UTC)


def _check_json(value: Any, what: str) -> str:
    try:
        return db.dumps(value)
    except (TypeError, ValueError) as e:
        raise UnstorableState(f"{what} cannot be stored: {e}") from e


def _frames(stack: Iterable[dict[str, Any]]) -> list[Frame]:
    return [Frame(**frame) for frame in stack]


# ----------------------------------------------------------------------------- in memory


class InMemoryStore:
    """The whole contract in dicts, thread-safe. Values go through JSON like in a database,
    so what works here works in `SqlStore` (a set or NaN in a variable fails in both)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (version, state as JSON text) per conversation
        self._conversations: dict[tuple[str, str], tuple[int, str]] = {}
        self._flows: dict[str, ir.Flow] = {}
        self._current: dict[str, str] = {}
        self._contacts: dict[tuple[str, str], Contact] = {}
        self._messages: list[LoggedMessage] = []
        self._mids: set[str] = set()

    # conversations

    def load(self, page_id: str, psid: str) -> ConversationState | None:
        """See `ConversationStore.load`."""
        saved = self._conversations.get((page_id, psid))
        return None if saved is None else ConversationState.from_dict(json.loads(saved[1]))

    def save(self, state: ConversationState) -> ConversationState:
        """See `ConversationStore.save`."""
        saved = replace(state, version=state.version + 1)
        text = _check_json(saved.to_dict(), "conversation state")
        key = (state.page_id, state.psid)
        with self._lock:
            current = self._conversations.get(key)
            if (0 if current is None else current[0]) != state.version:
                raise ConcurrentUpdate(state.page_id, state.psid, state.version)
            self._conversations[key] = (saved.version, text)
        return saved

    # flow versions

    def deploy(self, program: ir.FlowProgram) -> dict[str, str]:
        """See `FlowVersionStore.deploy`."""
        with self._lock:
            flows = program.flows.values()
            new = {f.id: f.content_hash for f in flows if f.content_hash not in self._flows}
            for flow in flows:
                self._flows[flow.content_hash] = flow
            self._current = {f.id: f.content_hash for f in flows}
        return new

    def flow_version(self, flow_id: str, content_hash: str) -> ir.Flow | None:
        """See `FlowVersionStore.flow_version`."""
        flow = self._flows.get(content_hash)
        return flow if flow is not None and flow.id == flow_id else None

    def current_versions(self) -> dict[str, str]:
        """See `FlowVersionStore.current_versions`."""
        return dict(self._current)

    # contacts

    def get_contact(self, page_id: str, psid: str) -> Contact | None:
        """See `ContactStore.get_contact`."""
        contact = self._contacts.get((page_id, psid))
        return None if contact is None else replace(contact)

    def save_contact(self, contact: Contact) -> None:
        """See `ContactStore.save_contact`."""
        stored = replace(contact, fetched_at=_utc(contact.fetched_at) or _now())
        self._contacts[(contact.page_id, contact.psid)] = stored

    # message log

    def log_inbound(
        self, page_id: str, psid: str, kind: str, body: dict[str, Any], *, mid: str | None = None
    ) -> int | None:
        """See `MessageLogStore.log_inbound`."""
        with self._lock:
            if mid is not None and mid in self._mids:
                return None
            return self._append(page_id, psid, "inbound", kind, body, "received", mid)

    def log_outbound(self, page_id: str, psid: str, kind: str, body: dict[str, Any]) -> int:
        """See `MessageLogStore.log_outbound`."""
        with self._lock:
            return self._append(page_id, psid, "outbound", kind, body, "pending", None)

    def _append(
        self,
        page_id: str,
        psid: str,
        direction: Direction,
        kind: str,
        body: dict[str, Any],
        status: MessageStatus,
        mid: str | None,
    ) -> int:
        body = json.loads(_check_json(body, "message body"))
        log_id = len(self._messages) + 1
        self._messages.append(
            LoggedMessage(log_id, page_id, psid, direction, mid, kind, body, status, _now())
        )
        if mid is not None:
            self._mids.add(mid)
        return log_id

    def set_status(
        self,
        log_id: int,
        status: MessageStatus,
        *,
        mid: str | None = None,
        error_code: int | None = None,
        error_subcode: int | None = None,
        error_message: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """See `MessageLogStore.set_status`."""
        times = _status_times(status, at)
        with self._lock:
            if not 1 <= log_id <= len(self._messages):
                return
            message = self._messages[log_id - 1]
            if mid is not None:
                self._mids.add(mid)
                message.mid = mid
            message.status = status
            message.error_code = error_code
            message.error_subcode = error_subcode
            message.error_message = error_message
            message.sent_at = times["sent_at"] or message.sent_at
            message.delivered_at = times["delivered_at"] or message.delivered_at
            message.read_at = times["read_at"] or message.read_at

    def mark_delivered(
        self, page_id: str, psid: str, watermark: int, mids: Sequence[str] = ()
    ) -> int:
        """See `MessageLogStore.mark_delivered`."""
        limit, now, changed = watermark_time(watermark), _now(), 0
        with self._lock:
            for m in self._outbound(page_id, psid, ("sent",)):
                if (m.sent_at is not None and m.sent_at <= limit) or m.mid in mids:
                    m.status, m.delivered_at, changed = "delivered", now, changed + 1
        return changed

    def mark_read(self, page_id: str, psid: str, watermark: int) -> int:
        """See `MessageLogStore.mark_read`."""
        limit, now, changed = watermark_time(watermark), _now(), 0
        with self._lock:
            for m in self._outbound(page_id, psid, ("sent", "delivered")):
                if m.sent_at is not None and m.sent_at <= limit:
                    m.status, m.read_at, changed = "read", now, changed + 1
                    m.delivered_at = m.delivered_at or now
        return changed

    def _outbound(self, page_id: str, psid: str, statuses: tuple[str, ...]) -> list[LoggedMessage]:
        return [
            m
            for m in self._messages
            if m.page_id == page_id
            and m.psid == psid
            and m.direction == "outbound"
            and m.status in statuses
        ]

    def messages(self, page_id: str, psid: str, limit: int = 100) -> list[LoggedMessage]:
        """See `MessageLogStore.messages`."""
        with self._lock:
            mine = [replace(m) for m in self._messages if m.page_id == page_id and m.psid == psid]
        return mine[-limit:] if limit > 0 else []


def _status_times(status: MessageStatus, at: datetime | None) -> dict[str, datetime | None]:
    when = _utc(at) or _now()
    return {
        "sent_at": when if status == "sent" else None,
        "delivered_at": when if status in ("delivered", "read") else None,
        "read_at": when if status == "read" else None,
    }


# ----------------------------------------------------------------------------- SQL statements
# Built once: SQLAlchemy caches the compiled form of each, so a call costs one execute.

_CONV = tables.conversations
_C = _CONV.c
_STATE_COLUMNS = (
    "flow_id",
    "flow_version",
    "step",
    "position",
    "status",
    "tries",
    "handed_over",
    "variables",
    "stack",
    "state_version",
)

_LOAD = select(*(_C[name] for name in _STATE_COLUMNS), _C.version).where(
    _C.page_id == bindparam("page_id"), _C.psid == bindparam("psid")
)
_UPDATE = (
    update(_CONV)
    .where(
        _C.page_id == bindparam("key_page_id"),
        _C.psid == bindparam("key_psid"),
        _C.version == bindparam("expected_version"),
    )
    .values(
        {
            **{name: bindparam(f"new_{name}", type_=_C[name].type) for name in _STATE_COLUMNS},
            "version": _C.version + 1,
            "updated_at": bindparam("new_updated_at", type_=_C.updated_at.type),
        }
    )
)
# ON CONFLICT DO NOTHING: when two first saves of one conversation race, the loser gets no row
# back (RETURNING, because drivers need not report a rowcount for INSERT).
_INSERT = {
    name: dialect.insert(_CONV)
    .on_conflict_do_nothing(index_elements=["page_id", "psid"])
    .returning(_C.version)
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
}

_CT = tables.contacts
_CONTACT_FIELDS = ("first_name", "last_name", "profile_pic", "locale", "timezone", "gender")
_GET_CONTACT = select(*(_CT.c[name] for name in _CONTACT_FIELDS), _CT.c.fetched_at).where(
    _CT.c.page_id == bindparam("page_id"), _CT.c.psid == bindparam("psid")
)


def _upsert_contact(insert: Any) -> Any:
    stmt = insert(_CT)
    changes = {name: stmt.excluded[name] for name in (*_CONTACT_FIELDS, "fetched_at")}
    return stmt.on_conflict_do_update(index_elements=["page_id", "psid"], set_=changes)


_SAVE_CONTACT = {
    "sqlite": _upsert_contact(sqlite.insert),
    "postgresql": _upsert_contact(postgresql.insert),
}

_FV = tables.flow_versions
_FLOW_VERSION = select(_FV.c.flow_id, _FV.c.ir).where(_FV.c.content_hash == bindparam("hash"))
_CURRENT = select(_FV.c.flow_id, _FV.c.content_hash).where(_FV.c.is_current == true())
_KNOWN = select(_FV.c.content_hash).where(
    _FV.c.content_hash.in_(bindparam("hashes", expanding=True))
)
_INSERT_FLOW = {
    "sqlite": sqlite.insert(_FV).on_conflict_do_nothing(index_elements=["content_hash"]),
    "postgresql": postgresql.insert(_FV).on_conflict_do_nothing(index_elements=["content_hash"]),
}
# Source positions are not part of the hash: a redeploy with moved lines refreshes them.
_REFRESH_FLOW = (
    update(_FV)
    .where(_FV.c.content_hash == bindparam("hash"))
    .values(ir=bindparam("new_ir", type_=_FV.c.ir.type))
)
# Any constant works; this one spells "Flow" in ASCII.
_DEPLOY_LOCK = select(func.pg_advisory_xact_lock(0x466C6F77))
_CLEAR_CURRENT = update(_FV).where(_FV.c.is_current == true()).values(is_current=false())
_SET_CURRENT = (
    update(_FV)
    .where(_FV.c.content_hash.in_(bindparam("hashes", expanding=True)))
    .values(is_current=true())
)

_M = tables.message_log
_MC = _M.c
_LOG_INBOUND = {
    "sqlite": sqlite.insert(_M).on_conflict_do_nothing(index_elements=["mid"]).returning(_MC.id),
    "postgresql": postgresql.insert(_M)
    .on_conflict_do_nothing(index_elements=["mid"])
    .returning(_MC.id),
}
_LOG_OUTBOUND = _M.insert().returning(_MC.id)
_TIME = _MC.created_at.type
_SET_STATUS = (
    update(_M)
    .where(_MC.id == bindparam("log_id"))
    .values(
        status=bindparam("new_status", type_=_MC.status.type),
        mid=func.coalesce(bindparam("new_mid", type_=_MC.mid.type), _MC.mid),
        error_code=bindparam("new_error_code", type_=_MC.error_code.type),
        error_subcode=bindparam("new_error_subcode", type_=_MC.error_subcode.type),
        error_message=bindparam("new_error_message", type_=_MC.error_message.type),
        sent_at=func.coalesce(bindparam("new_sent_at", type_=_TIME), _MC.sent_at),
        delivered_at=func.coalesce(bindparam("new_delivered_at", type_=_TIME), _MC.delivered_at),
        read_at=func.coalesce(bindparam("new_read_at", type_=_TIME), _MC.read_at),
    )
)
_OUTBOUND_OF = and_(
    _MC.page_id == bindparam("key_page_id"),
    _MC.psid == bindparam("key_psid"),
    _MC.direction == "outbound",
)
_SENT_BY = _MC.sent_at <= bindparam("watermark", type_=_TIME)
_UNACKNOWLEDGED = text(tables.UNACKNOWLEDGED)  # selects the partial index
_MARK_DELIVERED = (
    update(_M)
    .where(
        _OUTBOUND_OF,
        _UNACKNOWLEDGED,
        _MC.status == "sent",
        or_(_SENT_BY, _MC.mid.in_(bindparam("mids", expanding=True))),
    )
    .values(status="delivered", delivered_at=bindparam("now", type_=_TIME))
)
_MARK_READ = (
    update(_M)
    .where(_OUTBOUND_OF, _UNACKNOWLEDGED, _SENT_BY)
    .values(
        status="read",
        read_at=bindparam("now", type_=_TIME),
        delivered_at=func.coalesce(_MC.delivered_at, bindparam("now", type_=_TIME)),
    )
)
_MESSAGES = (
    select(_M)
    .where(_MC.page_id == bindparam("page_id"), _MC.psid == bindparam("psid"))
    .order_by(_MC.created_at.desc(), _MC.id.desc())
    .limit(bindparam("limit"))
)


def _logged_message(values: dict[str, Any]) -> LoggedMessage:
    for name in ("created_at", "sent_at", "delivered_at", "read_at"):
        values[name] = _utc(values[name])
    return LoggedMessage(**values)


@contextmanager
def _json_errors(what: str) -> Iterator[None]:
    """Turn a JSON serialization failure into the `UnstorableState` that `InMemoryStore`
    raises. SQLAlchemy serializes for SQLite (and wraps the error), psycopg for PostgreSQL."""
    try:
        yield
    except exc.DBAPIError:
        raise
    except exc.StatementError as e:
        if not isinstance(e.orig, (TypeError, ValueError)):
            raise
        raise UnstorableState(f"{what} cannot be stored: {e.orig}") from e
    except (TypeError, ValueError) as e:
        raise UnstorableState(f"{what} cannot be stored: {e}") from e


# ----------------------------------------------------------------------------- SQL


def load_state(conn: Connection, page_id: str, psid: str) -> ConversationState | None:
    """Load one conversation on an open connection (also used inside the server's
    per-event transaction)."""
    row = conn.execute(_LOAD, {"page_id": page_id, "psid": psid}).first()
    if row is None:
        return None
    values = {name: getattr(row, name) for name in _STATE_COLUMNS}
    values["stack"] = _frames(values["stack"])
    return ConversationState(page_id=page_id, psid=psid, version=row.version, **values)


def save_state(conn: Connection, insert: Any, state: ConversationState) -> bool:
    """Insert (version 0) or update a conversation if its version is still `state.version`;
    False when another writer got there first. `insert` comes from `insert_statement`."""
    now = _now()
    values: dict[str, Any] = {name: getattr(state, name) for name in _STATE_COLUMNS}
    values["stack"] = [asdict(frame) for frame in state.stack]
    if state.version == 0:
        values.update(
            page_id=state.page_id, psid=state.psid, version=1, created_at=now, updated_at=now
        )
        return conn.execute(insert, values).first() is not None
    params = {f"new_{name}": value for name, value in values.items()}
    params.update(
        key_page_id=state.page_id,
        key_psid=state.psid,
        expected_version=state.version,
        new_updated_at=now,
    )
    return conn.execute(_UPDATE, params).rowcount == 1


def insert_statement(dialect: str) -> Any:
    """The first-save statement for a database dialect ("sqlite" or "postgresql")."""
    return _INSERT[dialect]


class SqlStore:
    """The contract on SQLite or PostgreSQL. Use an engine from `runtime.db.create_engine_for`
    (its JSON serializer and SQLite pragmas are part of the behaviour) on a migrated database.

    Each operation is one statement, atomic on its own: on PostgreSQL it runs in autocommit
    mode (one round trip), on SQLite in a transaction of its own. `deploy` runs in one
    transaction."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect.name
        if dialect not in _INSERT:
            raise db.DbError(f"Flowlang supports SQLite and PostgreSQL, not {dialect}")
        self.engine = engine
        self._postgres = dialect == "postgresql"
        self._read: Callable[[], AbstractContextManager[Connection]]
        self._write: Callable[[], AbstractContextManager[Connection]]
        if dialect == "sqlite":
            # pysqlite opens a transaction only before a write: a plain connection reads
            # without one, and `begin()` makes each write one short transaction. (AUTOCOMMIT
            # would cost two PRAGMAs per checkout, ~50 µs.)
            self._read, self._write = engine.connect, engine.begin
        else:
            # One round trip per statement instead of BEGIN, statement, COMMIT.
            auto = engine.execution_options(isolation_level="AUTOCOMMIT")
            self._read = self._write = auto.connect
        self._insert = _INSERT[dialect]
        self._save_contact = _SAVE_CONTACT[dialect]
        self._insert_flow = _INSERT_FLOW[dialect]
        self._log_inbound = _LOG_INBOUND[dialect]
        self._flows: dict[str, ir.Flow] = {}

    @classmethod
    def from_url(cls, url: str | None = None) -> SqlStore:
        """A store on the database at `url`, which must be migrated to the newest revision
        (raises `runtime.db.DbError` with the `flowc db upgrade` hint otherwise)."""
        engine = db.create_engine_for(url)
        try:
            db.require_head(engine)
        except Exception:
            engine.dispose()
            raise
        return cls(engine)

    # conversations

    def load(self, page_id: str, psid: str) -> ConversationState | None:
        """See `ConversationStore.load`."""
        with self._read() as conn:
            return load_state(conn, page_id, psid)

    def save(self, state: ConversationState) -> ConversationState:
        """See `ConversationStore.save`."""
        with _json_errors("conversation state"), self._write() as conn:
            saved = save_state(conn, self._insert, state)
        if not saved:
            raise ConcurrentUpdate(state.page_id, state.psid, state.version)
        return replace(state, version=state.version + 1)

    # flow versions

    def deploy(self, program: ir.FlowProgram) -> dict[str, str]:
        """See `FlowVersionStore.deploy`."""
        flows = list(program.flows.values())
        hashes = [f.content_hash for f in flows]
        now = _now()
        with self.engine.begin() as conn:
            if self._postgres:
                # Two deploys at once would each clear the other's "current" marks.
                conn.execute(_DEPLOY_LOCK)
            known = set(conn.execute(_KNOWN, {"hashes": hashes}).scalars())
            new = [f for f in flows if f.content_hash not in known]
            old = [f for f in flows if f.content_hash in known]
            if new:
                rows = [
                    {
                        "content_hash": f.content_hash,
                        "flow_id": f.id,
                        "ir_version": ir.IR_VERSION,
                        "ir": f.model_dump(mode="json"),
                        "deployed_at": now,
                        "is_current": False,
                    }
                    for f in new
                ]
                conn.execute(self._insert_flow, rows)
            if old:
                rows = [{"hash": f.content_hash, "new_ir": f.model_dump(mode="json")} for f in old]
                conn.execute(_REFRESH_FLOW, rows)
            conn.execute(_CLEAR_CURRENT)
            conn.execute(_SET_CURRENT, {"hashes": hashes})
        for flow in flows:
            self._flows[flow.content_hash] = flow
        return {f.id: f.content_hash for f in new}

    def flow_version(self, flow_id: str, content_hash: str) -> ir.Flow | None:
        """See `FlowVersionStore.flow_version`. Versions are immutable, so they are cached."""
        flow = self._flows.get(content_hash)
        if flow is None:
            with self._read() as conn:
                row = conn.execute(_FLOW_VERSION, {"hash": content_hash}).first()
            if row is None:
                return None
            try:
                flow = ir.Flow.model_validate(row.ir)
            except pydantic.ValidationError as e:
                # Stored by an older Flowlang whose IR this one cannot read any more.
                log.warning("flow version %s of %s is unreadable: %s", content_hash, row.flow_id, e)
                return None
            self._flows[content_hash] = flow
        return flow if flow.id == flow_id else None

    def current_versions(self) -> dict[str, str]:
        """See `FlowVersionStore.current_versions`."""
        with self._read() as conn:
            return {row.flow_id: row.content_hash for row in conn.execute(_CURRENT)}

    # contacts

    def get_contact(self, page_id: str, psid: str) -> Contact | None:
        """See `ContactStore.get_contact`."""
        with self._read() as conn:
            row = conn.execute(_GET_CONTACT, {"page_id": page_id, "psid": psid}).first()
        if row is None:
            return None
        return Contact(page_id, psid, *row[:-1], fetched_at=_utc(row.fetched_at))

    def save_contact(self, contact: Contact) -> None:
        """See `ContactStore.save_contact`."""
        values = asdict(contact)
        values["fetched_at"] = _utc(contact.fetched_at) or _now()
        with self._write() as conn:
            conn.execute(self._save_contact, values)

    # message log

    def log_inbound(
        self, page_id: str, psid: str, kind: str, body: dict[str, Any], *, mid: str | None = None
    ) -> int | None:
        """See `MessageLogStore.log_inbound`."""
        return self._log(self._log_inbound, page_id, psid, "inbound", kind, body, "received", mid)

    def log_outbound(self, page_id: str, psid: str, kind: str, body: dict[str, Any]) -> int:
        """See `MessageLogStore.log_outbound`."""
        log_id = self._log(_LOG_OUTBOUND, page_id, psid, "outbound", kind, body, "pending", None)
        assert log_id is not None  # no mid, so no conflict can skip the insert
        return log_id

    def _log(
        self,
        statement: Any,
        page_id: str,
        psid: str,
        direction: Direction,
        kind: str,
        body: dict[str, Any],
        status: MessageStatus,
        mid: str | None,
    ) -> int | None:
        values = {
            "page_id": page_id,
            "psid": psid,
            "direction": direction,
            "mid": mid,
            "kind": kind,
            "body": body,
            "status": status,
            "created_at": _now(),
        }
        with _json_errors("message body"), self._write() as conn:
            return conn.execute(statement, values).scalar()

    def set_status(
        self,
        log_id: int,
        status: MessageStatus,
        *,
        mid: str | None = None,
        error_code: int | None = None,
        error_subcode: int | None = None,
        error_message: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """See `MessageLogStore.set_status`."""
        params = {f"new_{name}": value for name, value in _status_times(status, at).items()}
        params.update(
            log_id=log_id,
            new_status=status,
            new_mid=mid,
            new_error_code=error_code,
            new_error_subcode=error_subcode,
            new_error_message=error_message,
        )
        with self._write() as conn:
            conn.execute(_SET_STATUS, params)

    def mark_delivered(
        self, page_id: str, psid: str, watermark: int, mids: Sequence[str] = ()
    ) -> int:
        """See `MessageLogStore.mark_delivered`."""
        params = {
            "key_page_id": page_id,
            "key_psid": psid,
            "watermark": watermark_time(watermark),
            "mids": list(mids),
            "now": _now(),
        }
        with self._write() as conn:
            return conn.execute(_MARK_DELIVERED, params).rowcount

    def mark_read(self, page_id: str, psid: str, watermark: int) -> int:
        """See `MessageLogStore.mark_read`."""
        params = {
            "key_page_id": page_id,
            "key_psid": psid,
            "watermark": watermark_time(watermark),
            "now": _now(),
        }
        with self._write() as conn:
            return conn.execute(_MARK_READ, params).rowcount

    def messages(self, page_id: str, psid: str, limit: int = 100) -> list[LoggedMessage]:
        """See `MessageLogStore.messages`."""
        with self._read() as conn:
            rows = conn.execute(_MESSAGES, {"page_id": page_id, "psid": psid, "limit": limit})
            found = [_logged_message(row._asdict()) for row in rows]
        return found[::-1]

    # operations

    def query_plans(self) -> dict[str, str]:
        """The database's plan for each hot statement, to check that each one seeks an index
        (the primary key, or the unacknowledged-messages index) and none scans a table."""
        when = datetime(2026, 1, 1, tzinfo=UTC)
        key = {"key_page_id": "p", "key_psid": "u"}
        probes = {
            "load": (_LOAD, {"page_id": "p", "psid": "u"}),
            "save": (
                _UPDATE,
                {f"new_{name}": None for name in _STATE_COLUMNS}
                | key
                | {"expected_version": 1, "new_updated_at": when},
            ),
            "mark_delivered": (
                _MARK_DELIVERED,
                key | {"watermark": when, "mids": ["m"], "now": when},
            ),
            "mark_read": (_MARK_READ, key | {"watermark": when, "now": when}),
        }
        prefix = "EXPLAIN QUERY PLAN " if self.engine.dialect.name == "sqlite" else "EXPLAIN "
        found: list[list[Any]] = []

        def explain(*args: Any) -> tuple[str, Any]:
            return prefix + args[2], args[3]  # the statement SQLAlchemy built, and its params

        def fetch(*args: Any) -> None:
            found.append(args[1].fetchall())  # the plan, before SQLAlchemy closes the cursor

        plans = {}
        with self.engine.connect() as conn:
            event.listen(conn, "before_cursor_execute", explain, retval=True)
            event.listen(conn, "after_cursor_execute", fetch)
            for name, (statement, params) in probes.items():
                conn.execute(statement, params)
                plans[name] = "\n".join(str(row[-1]) for row in found.pop())
            conn.rollback()
        return plans
