"""The transactional outbox of CRM work (table ``crm_outbox``).

Writers call :func:`enqueue` with the SQL connection of the transaction that records what happened (the booking
row, the customer row): the CRM row commits or rolls back with it, so there is never a booking without its CRM
work, nor CRM work for a booking that did not happen. Nobody waits for the CRM: :class:`bot.crm.relay.OutboxRelay`
delivers the rows later.

Order and exclusivity: the rows of one ``stream`` (a customer: the conversation id) are delivered in ``id`` order.
Only a stream's *head* (its oldest row not yet done) may be claimed, and claiming sets a lease on it, so one
relay at a time works on a stream, across any number of processes; a crashed relay's lease expires. A failed
head (``status = failed``) holds its stream back until ``bookingbot outbox retry``: later work for that customer
(a deal for a customer that could not be created) would be wrong without it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.exceptions import StorageError
from bot.tables import CRM_OUTBOX

Op = Literal["customer", "booking", "cancel", "reschedule", "handoff", "message"]
_OPEN = ("pending", "failed")  # rows that still hold their stream


async def enqueue(
    conn: AsyncConnection,
    tenant: str,
    stream: str,
    op: Op,
    payload: dict[str, Any],
    *,
    booking_id: str | None = None,
) -> None:
    """Queue one CRM operation inside the caller's transaction (any backend's SQL connection)."""
    now = datetime.now(UTC)
    await conn.execute(
        insert(CRM_OUTBOX).values(
            tenant=tenant,
            stream=stream,
            op=op,
            payload=json.dumps(payload, ensure_ascii=False),
            booking_id=booking_id,
            status="pending",
            attempts=0,
            next_at=now,
            created_at=now,
        )
    )


class OutboxItem(BaseModel):
    id: int
    tenant: str
    stream: str
    op: Op
    payload: dict[str, Any]
    booking_id: str | None
    status: str
    attempts: int
    next_at: datetime
    last_error: str | None = None
    result: dict[str, Any] | None = None
    created_at: datetime
    lease_until: datetime | None = None  # as claimed: set means an earlier claim never finished its attempt

    @property
    def retried(self) -> bool:
        """Whether an earlier attempt may have reached erxes, so the work may be there already: it failed (the
        error outlives ``bookingbot outbox retry``, which resets ``attempts``) or its relay died mid-attempt."""
        return self.attempts > 0 or self.last_error is not None or self.lease_until is not None

    @classmethod
    def from_row(cls, row: Any) -> OutboxItem:
        data = dict(row._mapping)
        data["payload"] = json.loads(data["payload"])
        data["result"] = json.loads(data["result"]) if data.get("result") else None
        return cls.model_validate(data)


_COLUMNS = [CRM_OUTBOX.c[name] for name in OutboxItem.model_fields]


def describe(item: OutboxItem) -> str:
    """One line of ``bookingbot outbox``."""
    when = "failed" if item.status == "failed" else f"next {item.next_at:%Y-%m-%d %H:%M:%S}Z"
    error = f"  {item.last_error}" if item.last_error else ""
    return f"{item.id}  {item.tenant}  {item.stream}  {item.op}  {when}  attempts={item.attempts}{error}"


class Outbox:
    """The relay's and the operator's side of the table."""

    def __init__(self, engine: AsyncEngine, *, lease: timedelta = timedelta(minutes=2)) -> None:
        self.engine = engine
        self.lease = lease

    async def claim(
        self, tenants: list[str], now: datetime, limit: int = 20, *, stream: str | None = None
    ) -> list[OutboxItem]:
        """Lease up to ``limit`` stream heads that are due, oldest first (only ``stream``'s, if given)."""
        if not tenants:
            return []
        heads = select(func.min(CRM_OUTBOX.c.id)).where(
            CRM_OUTBOX.c.status.in_(_OPEN), CRM_OUTBOX.c.tenant.in_(tenants)
        )
        if stream is not None:
            heads = heads.where(CRM_OUTBOX.c.stream == stream)
        heads = heads.group_by(CRM_OUTBOX.c.tenant, CRM_OUTBOX.c.stream)
        free = or_(CRM_OUTBOX.c.lease_until.is_(None), CRM_OUTBOX.c.lease_until < now)
        due = and_(CRM_OUTBOX.c.status == "pending", CRM_OUTBOX.c.next_at <= now, free)
        query = select(*_COLUMNS).where(CRM_OUTBOX.c.id.in_(heads), due).order_by(CRM_OUTBOX.c.id).limit(limit)
        claimed: list[OutboxItem] = []
        async with self._begin() as conn:
            candidates = [OutboxItem.from_row(row) for row in await conn.execute(query)]
            for item in candidates:
                # Conditional: of two relays that read the same head, only one update matches.
                taken = await conn.execute(
                    update(CRM_OUTBOX)
                    .where(CRM_OUTBOX.c.id == item.id, due)
                    .values(lease_until=now + self.lease)
                )
                if taken.rowcount == 1:
                    claimed.append(item)
        return claimed

    async def complete(self, item: OutboxItem, result: dict[str, Any]) -> None:
        await self._set(item, status="done", result=json.dumps(result), done_at=datetime.now(UTC),
                        lease_until=None, last_error=None, attempts=item.attempts + 1)

    async def postpone(self, item: OutboxItem, error: str, delay: timedelta) -> None:
        await self._set(item, attempts=item.attempts + 1, last_error=error[:1000],
                        next_at=datetime.now(UTC) + delay, lease_until=None)

    async def fail(self, item: OutboxItem, error: str) -> None:
        await self._set(item, status="failed", attempts=item.attempts + 1, last_error=error[:1000], lease_until=None)

    async def known(self, tenant: str, stream: str) -> list[OutboxItem]:
        """The stream's delivered rows, newest first (the erxes ids they produced)."""
        query = (
            select(*_COLUMNS)
            .where(CRM_OUTBOX.c.tenant == tenant, CRM_OUTBOX.c.stream == stream, CRM_OUTBOX.c.status == "done")
            .order_by(CRM_OUTBOX.c.id.desc())
        )
        async with self._connect() as conn:
            return [OutboxItem.from_row(row) for row in await conn.execute(query)]

    async def open_rows(self, tenant: str | None = None, limit: int = 1000) -> list[OutboxItem]:
        """Pending and failed rows, oldest first (``bookingbot outbox``)."""
        query = select(*_COLUMNS).where(CRM_OUTBOX.c.status.in_(_OPEN))
        if tenant is not None:
            query = query.where(CRM_OUTBOX.c.tenant == tenant)
        async with self._connect() as conn:
            rows = await conn.execute(query.order_by(CRM_OUTBOX.c.id).limit(limit))
            return [OutboxItem.from_row(row) for row in rows]

    async def retry_failed(self, tenant: str | None = None) -> int:
        """Put failed rows back in the queue, due now, with a fresh attempt count; returns how many."""
        stmt = update(CRM_OUTBOX).where(CRM_OUTBOX.c.status == "failed")
        if tenant is not None:
            stmt = stmt.where(CRM_OUTBOX.c.tenant == tenant)
        async with self._begin() as conn:
            done = await conn.execute(stmt.values(status="pending", attempts=0, next_at=datetime.now(UTC)))
            return int(done.rowcount)

    async def stats(self, now: datetime) -> dict[str, tuple[int, float]]:
        """Per open status: (rows, age in seconds of the oldest)."""
        query = (
            select(CRM_OUTBOX.c.status, func.count(), func.min(CRM_OUTBOX.c.created_at))
            .where(CRM_OUTBOX.c.status.in_(_OPEN))
            .group_by(CRM_OUTBOX.c.status)
        )
        found = {status: (0, 0.0) for status in _OPEN}
        async with self._connect() as conn:
            for status, count, oldest in await conn.execute(query):
                age = (now - oldest).total_seconds() if isinstance(oldest, datetime) else 0.0
                found[status] = (int(count), max(0.0, age))
        return found

    async def _set(self, item: OutboxItem, **values: Any) -> None:
        async with self._begin() as conn:
            await conn.execute(update(CRM_OUTBOX).where(CRM_OUTBOX.c.id == item.id).values(**values))

    def _begin(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return _guarded(self.engine, begin=True)

    def _connect(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return _guarded(self.engine, begin=False)


@asynccontextmanager
async def _guarded(engine: AsyncEngine, *, begin: bool) -> AsyncIterator[AsyncConnection]:
    """A connection (or a transaction) whose database errors surface as :class:`StorageError`."""
    try:
        async with engine.begin() if begin else engine.connect() as conn:
            yield conn
    except (SQLAlchemyError, OSError) as exc:
        raise StorageError(f"crm outbox: {exc}") from exc
