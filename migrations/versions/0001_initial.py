"""Initial schema: conversations, contacts, flow versions, message log.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("page_id", sa.String(64), nullable=False),
        sa.Column("psid", sa.String(64), nullable=False),
        sa.Column("flow_id", sa.String(), nullable=True),
        sa.Column("flow_version", sa.String(), nullable=True),
        sa.Column("step", sa.String(), nullable=True),
        sa.Column("position", sa.String(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("handed_over", sa.Boolean(), nullable=False),
        sa.Column("variables", sa.JSON(), nullable=False),
        sa.Column("stack", sa.JSON(), nullable=False),
        sa.Column("state_version", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("page_id", "psid", name="pk_conversations"),
    )
    op.create_index("ix_conversations_status_updated_at", "conversations", ["status", "updated_at"])

    op.create_table(
        "contacts",
        sa.Column("page_id", sa.String(64), nullable=False),
        sa.Column("psid", sa.String(64), nullable=False),
        sa.Column("first_name", sa.String(), nullable=True),
        sa.Column("last_name", sa.String(), nullable=True),
        sa.Column("profile_pic", sa.Text(), nullable=True),
        sa.Column("locale", sa.String(16), nullable=True),
        sa.Column("timezone", sa.Float(), nullable=True),
        sa.Column("gender", sa.String(16), nullable=True),
        sa.Column("fetched_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("page_id", "psid", name="pk_contacts"),
    )

    op.create_table(
        "flow_versions",
        sa.Column("content_hash", sa.String(100), nullable=False),
        sa.Column("flow_id", sa.String(), nullable=False),
        sa.Column("ir_version", sa.Integer(), nullable=False),
        sa.Column("ir", sa.JSON(), nullable=False),
        sa.Column("deployed_at", _TIME, nullable=False),
        sa.Column("is_current", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("content_hash", name="pk_flow_versions"),
    )
    op.create_index("ix_flow_versions_flow_id", "flow_versions", ["flow_id"])
    op.create_index(
        "uq_flow_versions_current",
        "flow_versions",
        ["flow_id"],
        unique=True,
        sqlite_where=sa.text("is_current"),
        postgresql_where=sa.text("is_current"),
    )

    op.create_table(
        "message_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("page_id", sa.String(64), nullable=False),
        sa.Column("psid", sa.String(64), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("mid", sa.String(), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("error_subcode", sa.Integer(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("sent_at", _TIME, nullable=True),
        sa.Column("delivered_at", _TIME, nullable=True),
        sa.Column("read_at", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_message_log"),
        sa.UniqueConstraint("mid", name="uq_message_log_mid"),
    )
    op.create_index(
        "ix_message_log_page_id_psid_created_at",
        "message_log",
        ["page_id", "psid", "created_at"],
    )
    unacknowledged = sa.text("status IN ('sent', 'delivered')")
    op.create_index(
        "ix_message_log_unacknowledged",
        "message_log",
        ["page_id", "psid"],
        sqlite_where=unacknowledged,
        postgresql_where=unacknowledged,
    )


def downgrade() -> None:
    op.drop_table("message_log")
    op.drop_table("flow_versions")
    op.drop_table("contacts")
    op.drop_table("conversations")
