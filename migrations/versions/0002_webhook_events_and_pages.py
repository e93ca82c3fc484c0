"""The server's tables: the webhook inbox (webhook_events) and the pages with their tokens.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "webhook_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("page_id", sa.String(64), nullable=False),
        sa.Column("psid", sa.String(64), nullable=True),
        sa.Column("event_key", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("received_at", _TIME, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("processed_at", _TIME, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_events"),
        sa.UniqueConstraint("event_key", name="uq_webhook_events_event_key"),
    )
    op.create_index("ix_webhook_events_status_id", "webhook_events", ["status", "id"])

    op.create_table(
        "pages",
        sa.Column("page_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("token_encrypted", sa.Text(), nullable=False),
        sa.Column("healthy", sa.Boolean(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("page_id", name="pk_pages"),
    )


def downgrade() -> None:
    op.drop_table("pages")
    op.drop_table("webhook_events")
