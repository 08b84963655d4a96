"""Message log rows get a natural key, so a retried batch never writes a row twice.

``seq`` is a message's place in its turn (0: the inbound message, n: the n-th reply); with the conversation,
the provider's event id and the direction it identifies one logged message. Rows written before this revision
are numbered in id order, so the key can be added over them (rows already written twice stay, numbered apart).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_KEY = ["tenant", "conversation", "event_id", "direction", "seq"]


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("seq", sa.Integer(), nullable=False, server_default="0"))
    # UPDATE ... FROM runs on PostgreSQL and on SQLite >= 3.33.
    op.execute(
        """
        UPDATE messages SET seq = numbered.n
        FROM (
            SELECT id, row_number() OVER (
                PARTITION BY tenant, conversation, event_id, direction ORDER BY id
            ) - 1 AS n
            FROM messages WHERE event_id IS NOT NULL
        ) AS numbered
        WHERE messages.id = numbered.id AND numbered.n > 0
        """
    )
    op.create_index("uq_messages_key", "messages", _KEY, unique=True)


def downgrade() -> None:
    op.drop_index("uq_messages_key", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("seq")
