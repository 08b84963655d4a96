"""The SQL tables (SQLModel). Every row carries its ``tenant``; the schema itself is created by the Alembic
migrations in ``bot/migrations/versions`` (keep them in step with this module).

Double booking is impossible at the database level: a booking (or a block) owns one :class:`BookingCell` row per
grid cell it covers, and ``(tenant, cell)`` is the primary key. See :mod:`bot.booking.local`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Dialect, Index, Integer, Table, UniqueConstraint
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in; aware UTC datetimes out, on every database (SQLite keeps no offset of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} cannot be stored: give it a timezone")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid); PostgreSQL gets a BIGSERIAL.
_AUTO_ID: Any = BigInteger().with_variant(Integer(), "sqlite")


class Customer(SQLModel, table=True):
    """A person who wrote to a tenant. ``id`` is the conversation id (``channel:user``) the dialog uses."""

    __tablename__ = "customers"
    __table_args__ = (UniqueConstraint("tenant", "channel", "user_id", name="uq_customers_user"),)

    tenant: str = Field(primary_key=True)
    id: str = Field(primary_key=True)
    channel: str
    user_id: str
    name: str | None = None
    phone: str | None = None
    email: str | None = None
    created_at: datetime = Field(sa_type=UTCDateTime)


class Conversation(SQLModel, table=True):
    __tablename__ = "conversations"

    tenant: str = Field(primary_key=True)
    id: str = Field(primary_key=True)  # "channel:user"
    customer: str
    channel: str
    started_at: datetime = Field(sa_type=UTCDateTime)
    last_at: datetime = Field(sa_type=UTCDateTime)


class Message(SQLModel, table=True):
    """The message log: every inbound and outbound message, the source of ``bookingbot export``."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_conversation", "tenant", "conversation", "id"),
        # A message's natural key: a retried batch (its commit unacknowledged) cannot write a row twice.
        Index("uq_messages_key", "tenant", "conversation", "event_id", "direction", "seq", unique=True),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=_AUTO_ID)
    tenant: str
    conversation: str
    channel: str
    direction: str  # "in" | "out"
    at: datetime = Field(sa_type=UTCDateTime)
    text: str | None = None
    button: str | None = None  # data of the pressed button
    voice: str | None = None  # media reference of a voice note
    phone: str | None = None  # a shared contact's phone number
    state: str | None = None  # dialog state after the turn
    event_id: str | None = None
    seq: int = Field(default=0, sa_column_kwargs={"server_default": "0"})  # place in its turn: 0 in, n-th reply


class BookingRow(SQLModel, table=True):
    __tablename__ = "bookings"
    __table_args__ = (
        UniqueConstraint("tenant", "key", name="uq_bookings_key"),
        Index("ix_bookings_start", "tenant", "status", "start_at"),
        Index("ix_bookings_customer", "tenant", "customer"),
    )

    id: str = Field(primary_key=True)
    tenant: str
    key: str  # idempotency key
    customer: str
    service: str
    start_at: datetime = Field(sa_type=UTCDateTime)
    minutes: int
    name: str
    phone: str
    email: str | None = None
    status: str  # "active" | "cancelled"
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class BookingCell(SQLModel, table=True):
    """One occupied grid cell: ``cell`` is the cell's start in UTC minutes since the epoch.

    ``owner`` is a booking id, or ``block:<uuid>`` for time blocked outside the bot.
    """

    __tablename__ = "booking_cells"

    tenant: str = Field(primary_key=True)
    cell: int = Field(primary_key=True, sa_type=BigInteger)
    owner: str


class CalendarGrid(SQLModel, table=True):
    """The cell size (minutes) a tenant's :class:`BookingCell` rows are laid out in."""

    __tablename__ = "calendar_grids"

    tenant: str = Field(primary_key=True)
    cell: int


class CrmOutboxRow(SQLModel, table=True):
    """One CRM operation waiting for (or done by) the outbox relay: see :mod:`bot.crm.outbox`.

    ``stream`` is the customer (conversation id): rows of one stream are delivered in ``id`` order.
    ``result`` (JSON) holds the erxes ids the operation produced or used.
    """

    __tablename__ = "crm_outbox"
    __table_args__ = (
        Index("ix_crm_outbox_stream", "tenant", "stream", "id"),
        Index("ix_crm_outbox_status", "status", "next_at"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=_AUTO_ID)
    tenant: str
    stream: str
    op: str  # customer | booking | cancel | reschedule | handoff | message
    payload: str  # JSON
    booking_id: str | None = None
    status: str  # pending | done | failed
    attempts: int = 0
    next_at: datetime = Field(sa_type=UTCDateTime)
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = None
    result: str | None = None  # JSON
    created_at: datetime = Field(sa_type=UTCDateTime)
    done_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class LLMUsage(SQLModel, table=True):
    """One call to the LLM provider: who it was for, why, and the tokens the provider reported."""

    __tablename__ = "llm_usage"
    __table_args__ = (Index("ix_llm_usage_at", "tenant", "at"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=_AUTO_ID)
    tenant: str
    conversation: str
    purpose: str  # "paraphrase" | "extract"
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens the provider served from its prompt cache
    outcome: str  # ok | rejected | error | timeout
    at: datetime = Field(sa_type=UTCDateTime)


# The same tables for SQLAlchemy Core (``CELLS.c.cell``), which the hot paths use: no ORM session overhead.
CUSTOMERS: Table = SQLModel.metadata.tables["customers"]
CONVERSATIONS: Table = SQLModel.metadata.tables["conversations"]
MESSAGES: Table = SQLModel.metadata.tables["messages"]
BOOKINGS: Table = SQLModel.metadata.tables["bookings"]
CELLS: Table = SQLModel.metadata.tables["booking_cells"]
GRIDS: Table = SQLModel.metadata.tables["calendar_grids"]
CRM_OUTBOX: Table = SQLModel.metadata.tables["crm_outbox"]
LLM_USAGE: Table = SQLModel.metadata.tables["llm_usage"]

# Every table has a ``tenant`` column: deleting a tenant's rows from these removes all of its data.
TENANT_TABLES: tuple[Table, ...] = (CUSTOMERS, CONVERSATIONS, MESSAGES, BOOKINGS, CELLS, GRIDS, CRM_OUTBOX, LLM_USAGE)
