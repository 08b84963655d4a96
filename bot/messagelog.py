"""The message log: every inbound and outbound message, written to SQL in batches off the hot path.

``add()`` only appends to memory; a background task writes a batch once ``batch_size`` rows are waiting or
``interval`` seconds after the first one, whichever comes first. Each batch is one transaction that also keeps
``customers`` and ``conversations`` up to date. A batch that fails stays queued and is retried; ``flush()``
writes everything queued (and raises :class:`StorageError` if it cannot), ``aclose()`` flushes before returning.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import case, func, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.db import dialect_insert
from bot.exceptions import StorageError
from bot.tables import CONVERSATIONS, CUSTOMERS, MESSAGES

log = logging.getLogger(__name__)

_RETRY_SECONDS = 1.0


class LoggedMessage(BaseModel):
    """One logged message. ``state`` is the dialog state after the turn the message belongs to."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    conversation: str  # "channel:user"
    channel: str
    direction: Literal["in", "out"]
    at: datetime  # aware
    text: str | None = None
    button: str | None = None  # data of the pressed button
    voice: str | None = None  # media reference of a voice note
    phone: str | None = None  # a shared contact's phone number
    state: str | None = None
    event_id: str | None = None


_COLUMNS = tuple(LoggedMessage.model_fields)


async def _insert_messages(conn: AsyncConnection, batch: list[LoggedMessage]) -> None:
    """Append a batch to ``messages``: binary COPY on PostgreSQL (a fraction of an INSERT's cost per row, which
    matters on the turn's hot path), a plain executemany INSERT elsewhere."""
    if conn.dialect.name != "postgresql":
        await conn.execute(insert(MESSAGES), [row.model_dump() for row in batch])
        return
    driver = (await conn.get_raw_connection()).driver_connection
    if driver is None:
        raise StorageError("message log: the database connection is closed")
    records = [tuple(getattr(row, column) for column in _COLUMNS) for row in batch]
    await driver.copy_records_to_table(MESSAGES.name, records=records, columns=_COLUMNS)


_TOUCH_EVERY = timedelta(minutes=1)
_TOUCHED_MAX = 100_000  # conversations remembered; past that, forget them all (a few extra upserts, no harm)


def _user_id(conversation: str, channel: str) -> str:
    """The channel's user id inside a conversation id (``channels.base.InboundMessage.conversation``)."""
    return conversation.removeprefix(f"{channel}:")


class MessageLog:
    def __init__(self, engine: AsyncEngine, *, batch_size: int = 100, interval: float = 0.05) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.interval = interval
        self._pending: list[LoggedMessage] = []
        self._has_rows = asyncio.Event()
        self._full = asyncio.Event()
        self._lock = asyncio.Lock()  # one writer at a time keeps rows in the order they were added
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._touched: dict[tuple[str, str], datetime] = {}  # conversation -> last_at this process wrote

    def add(self, row: LoggedMessage) -> None:
        """Queue a row (never blocks). Raises StorageError after :meth:`aclose`, rather than dropping it."""
        if self._closed:
            raise StorageError("the message log is closed")
        self._pending.append(row)
        self._has_rows.set()
        if len(self._pending) >= self.batch_size:
            self._full.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="messagelog-writer")

    async def aclose(self) -> None:
        """Stop the writer after its current batch (never mid-write) and write whatever is still queued."""
        self._closed = True
        self._has_rows.set()
        self._full.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()

    async def flush(self) -> None:
        """Write every queued row now."""
        async with self._lock:
            while self._pending:
                batch = self._pending[: self.batch_size]
                await self._write(batch)
                del self._pending[: len(batch)]  # only once written: a failed batch is retried, not lost
            self._has_rows.clear()
            self._full.clear()

    async def conversation(self, tenant: str, conversation_id: str) -> list[LoggedMessage]:
        """A conversation's logged messages, oldest first (written ones only: :meth:`flush` first if needed)."""
        columns = [MESSAGES.c[name] for name in LoggedMessage.model_fields]
        query = (
            select(*columns)
            .where(MESSAGES.c.tenant == tenant, MESSAGES.c.conversation == conversation_id)
            .order_by(MESSAGES.c.id)
        )
        async with self.engine.connect() as conn:
            rows = await conn.execute(query)
            return [LoggedMessage.model_validate(row._mapping) for row in rows]

    async def record_customer(
        self,
        tenant: str,
        conversation: str,
        channel: str,
        *,
        name: str | None = None,
        phone: str | None = None,
        email: str | None = None,
        also: Callable[[AsyncConnection], Awaitable[None]] | None = None,
    ) -> None:
        """Create or update the customer behind a conversation; ``None`` keeps what is stored.

        ``also`` runs inside the same transaction (the CRM outbox row that carries the customer to the CRM)."""
        known = {"name": name, "phone": phone, "email": email}
        try:
            async with self.engine.begin() as conn:
                stmt = dialect_insert(conn, CUSTOMERS).values(
                    tenant=tenant,
                    id=conversation,
                    channel=channel,
                    user_id=_user_id(conversation, channel),
                    created_at=datetime.now(UTC),
                    **known,
                )
                keep = {k: func.coalesce(stmt.excluded[k], CUSTOMERS.c[k]) for k in known}
                await conn.execute(stmt.on_conflict_do_update(index_elements=["tenant", "id"], set_=keep))
                if also is not None:
                    await also(conn)
        except (SQLAlchemyError, OSError) as exc:
            raise StorageError(f"cannot record customer {tenant}/{conversation}: {exc}") from exc

    async def _run(self) -> None:
        while not self._closed:
            await self._has_rows.wait()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.interval)
            try:
                await self.flush()
            except StorageError:
                log.exception("message log: write failed, %d rows kept for retry", len(self._pending))
                await asyncio.sleep(_RETRY_SECONDS)

    async def _write(self, batch: list[LoggedMessage]) -> None:
        spans = self._spans_to_touch(batch)
        try:
            async with self.engine.begin() as conn:
                await _insert_messages(conn, batch)
                if spans:
                    await self._touch_conversations(conn, spans)
        except (SQLAlchemyError, OSError) as exc:
            raise StorageError(f"message log: cannot write {len(batch)} rows: {exc}") from exc
        if len(self._touched) > _TOUCHED_MAX:
            self._touched.clear()
        self._touched.update({key: last for key, (_channel, _first, last) in spans.items()})

    def _spans_to_touch(self, batch: list[LoggedMessage]) -> dict[tuple[str, str], tuple[str, datetime, datetime]]:
        """The batch's conversations whose rows need a write: new to this process, or ``last_at`` older than
        :data:`_TOUCH_EVERY` (so a busy conversation costs one upsert a minute, not one per batch)."""
        spans: dict[tuple[str, str], tuple[str, datetime, datetime]] = {}
        for row in batch:
            key = (row.tenant, row.conversation)
            channel, first, last = spans.get(key, (row.channel, row.at, row.at))
            spans[key] = (channel, min(first, row.at), max(last, row.at))
        return {
            key: span
            for key, span in spans.items()
            if (written := self._touched.get(key)) is None or span[2] - written >= _TOUCH_EVERY
        }

    async def _touch_conversations(
        self, conn: AsyncConnection, spans: dict[tuple[str, str], tuple[str, datetime, datetime]]
    ) -> None:
        """Create the conversations' customers and rows, and move each conversation's ``last_at`` forward."""
        # Sorted: every process takes the row locks in the same order, so concurrent writers cannot deadlock.
        ordered = sorted(spans.items())
        customers = [
            {"tenant": t, "id": c, "channel": ch, "user_id": _user_id(c, ch), "created_at": first}
            for (t, c), (ch, first, _last) in ordered
        ]
        # executemany form (rows as parameters, not .values(rows)): compiled once and cached, whatever the batch size
        await conn.execute(dialect_insert(conn, CUSTOMERS).on_conflict_do_nothing(), customers)
        conversations = [
            {"tenant": t, "id": c, "customer": c, "channel": ch, "started_at": first, "last_at": last}
            for (t, c), (ch, first, last) in ordered
        ]
        stmt = dialect_insert(conn, CONVERSATIONS)
        later = case(
            (stmt.excluded.last_at > CONVERSATIONS.c.last_at, stmt.excluded.last_at), else_=CONVERSATIONS.c.last_at
        )
        await conn.execute(
            stmt.on_conflict_do_update(index_elements=["tenant", "id"], set_={"last_at": later}), conversations
        )
