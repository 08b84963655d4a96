"""Initial schema: customers, conversations, message log, bookings and the booking cells that prevent overlaps.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_AT = sa.DateTime(timezone=True)
_AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("phone", sa.String(), nullable=True),
        sa.Column("email", sa.String(), nullable=True),
        sa.Column("created_at", _AT, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "id", name="pk_customers"),
        sa.UniqueConstraint("tenant", "channel", "user_id", name="uq_customers_user"),
    )
    op.create_table(
        "conversations",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("customer", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("started_at", _AT, nullable=False),
        sa.Column("last_at", _AT, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "id", name="pk_conversations"),
    )
    op.create_table(
        "messages",
        sa.Column("id", _AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("conversation", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("direction", sa.String(), nullable=False),
        sa.Column("at", _AT, nullable=False),
        sa.Column("text", sa.String(), nullable=True),
        sa.Column("button", sa.String(), nullable=True),
        sa.Column("voice", sa.String(), nullable=True),
        sa.Column("phone", sa.String(), nullable=True),
        sa.Column("state", sa.String(), nullable=True),
        sa.Column("event_id", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
    )
    op.create_index("ix_messages_conversation", "messages", ["tenant", "conversation", "id"])
    op.create_table(
        "bookings",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("customer", sa.String(), nullable=False),
        sa.Column("service", sa.String(), nullable=False),
        sa.Column("start_at", _AT, nullable=False),
        sa.Column("minutes", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("phone", sa.String(), nullable=False),
        sa.Column("email", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("updated_at", _AT, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bookings"),
        sa.UniqueConstraint("tenant", "key", name="uq_bookings_key"),
        sa.CheckConstraint("status IN ('active', 'cancelled')", name="ck_bookings_status"),
        sa.CheckConstraint("minutes > 0", name="ck_bookings_minutes"),
    )
    op.create_index("ix_bookings_start", "bookings", ["tenant", "status", "start_at"])
    op.create_index("ix_bookings_customer", "bookings", ["tenant", "customer"])
    op.create_table(
        "booking_cells",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("cell", sa.BigInteger(), nullable=False),
        sa.Column("owner", sa.String(), nullable=False),
        # THE guard against double booking: one owner per tenant and cell.
        sa.PrimaryKeyConstraint("tenant", "cell", name="pk_booking_cells"),
    )
    op.create_table(
        "calendar_grids",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("cell", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", name="pk_calendar_grids"),
        sa.CheckConstraint("cell > 0", name="ck_calendar_grids_cell"),
    )


def downgrade() -> None:
    op.drop_table("calendar_grids")
    op.drop_table("booking_cells")
    op.drop_index("ix_bookings_customer", table_name="bookings")
    op.drop_index("ix_bookings_start", table_name="bookings")
    op.drop_table("bookings")
    op.drop_index("ix_messages_conversation", table_name="messages")
    op.drop_table("messages")
    op.drop_table("conversations")
    op.drop_table("customers")
