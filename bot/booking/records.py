"""Reading our SQL record of a tenant's bookings (the ``bookings`` table), shared by both backends: ``local``
keeps its calendar there, ``calcom`` its record of what it booked in cal.com."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Row, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.booking.base import Booking, Clock
from bot.tables import BOOKINGS
from dialogs.ports import BookingView


class BookingRecords:
    """Mixed into a backend that has ``engine``, ``tenant``, ``tz`` and ``clock``: the backend's reads of its
    bookings, which both answer from our record."""

    engine: AsyncEngine
    tenant: str
    tz: ZoneInfo
    clock: Clock | None

    async def customer_bookings(self, customer: str) -> list[BookingView]:
        """The customer's active bookings that have not ended yet (all of them without a clock)."""
        bookings = await self._active(BOOKINGS.c.customer == customer)
        if self.clock is not None:
            now = self.clock()
            bookings = [b for b in bookings if b.start + timedelta(minutes=b.minutes) > now]
        return [b.view() for b in bookings]

    async def active_bookings(self) -> list[Booking]:
        return await self._active()

    async def by_id(self, booking_id: str) -> Booking | None:
        async with self.engine.connect() as conn:
            return await self._find(conn, BOOKINGS.c.id == booking_id)

    async def _find(
        self, conn: AsyncConnection, condition: ColumnElement[bool], *, lock: bool = False
    ) -> Booking | None:
        query = select(BOOKINGS).where(BOOKINGS.c.tenant == self.tenant, condition)
        row = (await conn.execute(query.with_for_update() if lock else query)).first()
        return None if row is None else self._booking(row)

    async def _active(self, *conditions: ColumnElement[bool]) -> list[Booking]:
        query = (
            select(BOOKINGS)
            .where(BOOKINGS.c.tenant == self.tenant, BOOKINGS.c.status == "active", *conditions)
            .order_by(BOOKINGS.c.start_at, BOOKINGS.c.id)
        )
        async with self.engine.connect() as conn:
            return [self._booking(row) for row in await conn.execute(query)]

    def _booking(self, row: Row[Any]) -> Booking:
        return Booking(
            id=row.id,
            tenant=row.tenant,
            key=row.key,
            customer=row.customer,
            service=row.service,
            start=row.start_at.astimezone(self.tz),
            minutes=row.minutes,
            name=row.name,
            phone=row.phone,
            email=row.email,
            status=row.status,
        )
