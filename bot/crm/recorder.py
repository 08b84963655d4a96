"""What the rest of ``bot`` tells the CRM: each domain event becomes an outbox row (:func:`bot.crm.outbox.enqueue`).

A booking backend calls :meth:`CrmRecorder.booking_written` inside the transaction that writes the booking (the
``on_write`` hook of :class:`bot.booking.local.LocalCalendar`; a backend with its own SQL record of bookings
passes its connection the same way). The customer record calls :meth:`customer_synced` inside its upsert;
handoffs and mirrored messages have no record of their own and get a transaction here.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.booking.base import Booking
from bot.crm.outbox import Op, enqueue
from bot.exceptions import StorageError
from bot.settings import ErxesConfig


class CrmRecorder:
    """One tenant's CRM write side. ``labels``: service id -> what staff read (the tenant's service label)."""

    def __init__(self, engine: AsyncEngine, tenant: str, config: ErxesConfig, labels: dict[str, str]) -> None:
        self.engine = engine
        self.tenant = tenant
        self.config = config
        self.labels = labels

    async def booking_written(
        self, conn: AsyncConnection, kind: Literal["book", "cancel", "reschedule"], booking: Booking
    ) -> None:
        op: Op = "booking" if kind == "book" else kind
        end = booking.start + timedelta(minutes=booking.minutes)
        payload = {
            "booking_id": booking.id,
            "service": self.labels.get(booking.service, booking.service),
            "start": booking.start.isoformat(),
            "end": end.isoformat(),
            "name": booking.name,
            "phone": booking.phone,
            "email": booking.email,
        }
        await enqueue(conn, self.tenant, booking.customer, op, payload, booking_id=booking.id)

    async def customer_synced(
        self, conn: AsyncConnection, conversation: str, name: str | None, phone: str | None, email: str | None
    ) -> None:
        payload = {"name": name, "phone": phone, "email": email}
        await enqueue(conn, self.tenant, conversation, "customer", payload)

    async def handoff(self, conversation: str, reason: str) -> None:
        await self._alone(conversation, [("handoff", {"reason": reason})])

    async def messages(self, conversation: str, lines: list[tuple[str, str]]) -> None:
        """Mirror a turn's messages ((direction, text) pairs, in order) when the tenant's mirror is on."""
        if self.config.inbox_integration_id and lines:
            await self._alone(conversation, [("message", {"direction": d, "text": t}) for d, t in lines])

    async def _alone(self, conversation: str, rows: list[tuple[Op, dict[str, str]]]) -> None:
        """Queue rows in a transaction of their own (events with no record to share one with)."""
        try:
            async with self.engine.begin() as conn:
                for op, payload in rows:
                    await enqueue(conn, self.tenant, conversation, op, payload)
        except (SQLAlchemyError, OSError) as exc:
            raise StorageError(f"crm: cannot queue work for {self.tenant}/{conversation}: {exc}") from exc
