"""Flow events for monitoring, outbox leases and a pending-events index for several instances.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)
_PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.create_table(
        "flow_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("page_id", sa.String(64), nullable=False),
        sa.Column("psid", sa.String(64), nullable=False),
        sa.Column("flow_id", sa.String(), nullable=True),
        sa.Column("step", sa.String(), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("source", sa.String(), nullable=True),
        sa.Column("at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_flow_events"),
    )
    op.create_index("ix_flow_events_at", "flow_events", ["at"])
    op.create_index("ix_flow_events_page_id_psid", "flow_events", ["page_id", "psid"])

    op.create_table(
        "outbox_leases",
        sa.Column("page_id", sa.String(64), nullable=False),
        sa.Column("psid", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("expires_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("page_id", "psid", name="pk_outbox_leases"),
    )

    op.create_index(
        "ix_webhook_events_pending_conversation",
        "webhook_events",
        ["page_id", "psid", "id"],
        sqlite_where=_PENDING,
        postgresql_where=_PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_events_pending_conversation", table_name="webhook_events")
    op.drop_table("outbox_leases")
    op.drop_table("flow_events")
