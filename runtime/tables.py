"""The database schema of the runtime, as SQLAlchemy Core tables (migrations/ creates them).

Any change here needs a new Alembic revision in migrations/versions/; a test compares this
metadata with the migrated database and fails when they drift apart."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

# Deterministic names, so later migrations can refer to constraints on every backend.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Timestamps are always UTC; SQLite keeps them as naive text, PostgreSQL as timestamptz.
_Time = DateTime(timezone=True)

#: One row per (page, user) conversation: the persisted `ConversationState`.
conversations = Table(
    "conversations",
    metadata,
    Column("page_id", String(64), primary_key=True),
    Column("psid", String(64), primary_key=True),
    Column("flow_id", String),
    # Content hash of the flow version the conversation runs on (see flow_versions).
    Column("flow_version", String),
    Column("step", String),
    Column("position", String),
    Column("status", String(16), nullable=False),
    Column("tries", Integer, nullable=False),
    Column("handed_over", Boolean, nullable=False),
    Column("variables", JSON, nullable=False),
    Column("stack", JSON, nullable=False),
    Column("state_version", Integer, nullable=False),
    # Optimistic concurrency: a save succeeds only if the row still has the version it read.
    Column("version", Integer, nullable=False),
    Column("created_at", _Time, nullable=False),
    Column("updated_at", _Time, nullable=False),
    # Monitoring: "how many conversations wait, and since when".
    Index(None, "status", "updated_at"),
)

#: The user profile fetched from the Graph API, for `user.*` in templates.
contacts = Table(
    "contacts",
    metadata,
    Column("page_id", String(64), primary_key=True),
    Column("psid", String(64), primary_key=True),
    Column("first_name", String),
    Column("last_name", String),
    Column("profile_pic", Text),
    Column("locale", String(16)),
    # Hours from UTC; Messenger sends fractions for zones such as +5.5.
    Column("timezone", Float),
    Column("gender", String(16)),
    Column("fetched_at", _Time, nullable=False),
)

#: Every deployed version of every flow: the compiled `ir.Flow` JSON, by content hash.
flow_versions = Table(
    "flow_versions",
    metadata,
    Column("content_hash", String(100), primary_key=True),
    Column("flow_id", String, nullable=False, index=True),
    Column("ir_version", Integer, nullable=False),
    Column("ir", JSON, nullable=False),
    Column("deployed_at", _Time, nullable=False),
    # Exactly one current version per flow (or none when the flow was removed).
    Column("is_current", Boolean, nullable=False),
    Index(
        "uq_flow_versions_current",
        "flow_id",
        unique=True,
        sqlite_where=text("is_current"),
        postgresql_where=text("is_current"),
    ),
)

#: Outbound messages still waiting for a delivery or read receipt. A literal predicate, so that
#: SQLite (which does not reason about bound parameters) can match it to the partial index.
UNACKNOWLEDGED = "status IN ('sent', 'delivered')"

#: Inbound and outbound messages with their delivery status.
message_log = Table(
    "message_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("page_id", String(64), nullable=False),
    Column("psid", String(64), nullable=False),
    Column("direction", String(8), nullable=False),
    # Messenger's message id: the dedupe key of redelivered webhooks (NULLs never collide).
    Column("mid", String, unique=True),
    Column("kind", String(32), nullable=False),
    Column("body", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("error_code", Integer),
    Column("error_subcode", Integer),
    Column("error_message", Text),
    Column("created_at", _Time, nullable=False),
    Column("sent_at", _Time),
    Column("delivered_at", _Time),
    Column("read_at", _Time),
    Index(None, "page_id", "psid", "created_at"),
    # Receipts touch only these rows, however long a conversation's history grows.
    Index(
        "ix_message_log_unacknowledged",
        "page_id",
        "psid",
        sqlite_where=text(UNACKNOWLEDGED),
        postgresql_where=text(UNACKNOWLEDGED),
    ),
)

# A 64-bit id on PostgreSQL (an inbox at 1,000 events/s exhausts 32 bits in weeks); SQLite's
# INTEGER PRIMARY KEY is already 64-bit and must stay spelled INTEGER to be the rowid.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

#: Every event received on the webhook, stored (and de-duplicated by `event_key`) before the
#: 200 is sent: the durable inbox the server processes in id order per conversation.
webhook_events = Table(
    "webhook_events",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("page_id", String(64), nullable=False),
    # None for page-level events (policy enforcement, app roles, plugin opt-ins).
    Column("psid", String(64)),
    Column("event_key", String(255), nullable=False, unique=True),
    Column("kind", String(32), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("received_at", _Time, nullable=False),
    # pending | done | failed | ignored | unknown_page
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("processed_at", _Time),
    Column("error", Text),
    # Start-up loads the pending events in id order.
    Index(None, "status", "id"),
)

#: The Facebook Pages the server answers for, with their access tokens encrypted at rest.
pages = Table(
    "pages",
    metadata,
    Column("page_id", String(64), primary_key=True),
    Column("name", String),
    Column("token_encrypted", Text, nullable=False),
    # False after the Graph API refused the token (error 190): sends wait for a new token.
    Column("healthy", Boolean, nullable=False),
    Column("last_error", Text),
    Column("updated_at", _Time, nullable=False),
)

#: What happened in flows, for `flowc monitor`: a flow started or ended, a turn faulted, a
#: conversation was handed over. Written in the same transaction as the turn that did it.
flow_events = Table(
    "flow_events",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("page_id", String(64), nullable=False),
    Column("psid", String(64), nullable=False),
    Column("flow_id", String),
    Column("step", String),
    # start | end | fault | hand_over
    Column("kind", String(16), nullable=False),
    # A fault's reason, with the `.flow` file:line that caused it when known.
    Column("detail", Text),
    Column("source", String),
    Column("at", _Time, nullable=False),
    Index(None, "at"),
    Index(None, "page_id", "psid"),
)

#: Which server instance sends a conversation's outbound messages right now. Several
#: instances share one database: a conversation's messages go out from one instance at a
#: time (so in order); a lease not renewed by `expires_at` (a crashed instance) can be taken.
outbox_leases = Table(
    "outbox_leases",
    metadata,
    Column("page_id", String(64), primary_key=True),
    Column("psid", String(64), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("expires_at", _Time, nullable=False),
)

#: Pending events of one conversation, oldest first: an instance processes an event only
#: when no earlier event of its conversation is still pending (order across instances).
PENDING = "status = 'pending'"
Index(
    "ix_webhook_events_pending_conversation",
    webhook_events.c.page_id,
    webhook_events.c.psid,
    webhook_events.c.id,
    sqlite_where=text(PENDING),
    postgresql_where=text(PENDING),
)
