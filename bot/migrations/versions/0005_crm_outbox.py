"""The CRM outbox: erxes operations written in the booking's transaction, delivered by the worker in order.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_AT = sa.DateTime(timezone=True)
_AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "crm_outbox",
        sa.Column("id", _AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("stream", sa.String(), nullable=False),
        sa.Column("op", sa.String(), nullable=False),
        sa.Column("payload", sa.String(), nullable=False),
        sa.Column("booking_id", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_at", _AT, nullable=False),
        sa.Column("lease_until", _AT, nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("result", sa.String(), nullable=True),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("done_at", _AT, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_crm_outbox"),
        sa.CheckConstraint("status IN ('pending', 'done', 'failed')", name="ck_crm_outbox_status"),
    )
    op.create_index("ix_crm_outbox_stream", "crm_outbox", ["tenant", "stream", "id"])
    op.create_index("ix_crm_outbox_status", "crm_outbox", ["status", "next_at"])


def downgrade() -> None:
    op.drop_index("ix_crm_outbox_status", table_name="crm_outbox")
    op.drop_index("ix_crm_outbox_stream", table_name="crm_outbox")
    op.drop_table("crm_outbox")
