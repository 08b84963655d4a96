"""The booking backend interface. One instance serves one tenant.

A backend is also the engine's :class:`dialogs.ports.CalendarPort` (the read side); writes come from effects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, datetime
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict
from sqlalchemy.ext.asyncio import AsyncConnection

from dialogs.ports import BookingView

Clock = Callable[[], datetime]  # "now", aware; tests freeze it


class BookRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str  # idempotency key: booking twice with the same key returns the first booking
    customer: str
    service: str
    start: datetime  # aware
    name: str
    phone: str
    email: str | None = None


class Booking(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    tenant: str
    key: str
    customer: str
    service: str
    start: datetime  # aware, tenant timezone
    minutes: int
    name: str
    phone: str
    email: str | None = None
    status: Literal["active", "cancelled"] = "active"

    def view(self) -> BookingView:
        return BookingView(id=self.id, service=self.service, start=self.start, minutes=self.minutes)


BookingKind = Literal["book", "cancel", "reschedule"]
# Called by a backend inside the SQL transaction that records a booking change, with that transaction's
# connection, so what it writes (the CRM outbox rows) commits or rolls back with the booking.
BookingWritten = Callable[[AsyncConnection, BookingKind, Booking], Awaitable[None]]


class BookingBackend(Protocol):
    async def free_slots(self, service: str, day_from: date, day_to: date, now: datetime) -> list[datetime]: ...

    async def is_open(self, day: date) -> bool: ...

    async def customer_bookings(self, customer: str) -> list[BookingView]: ...

    async def book(self, request: BookRequest) -> Booking:
        """Book, or return the booking already made with ``request.key``. Raises SlotTaken."""
        ...

    async def cancel(self, booking_id: str) -> Booking:
        """Cancel (idempotent). Raises BookingNotFound."""
        ...

    async def reschedule(self, booking_id: str, start: datetime) -> Booking:
        """Move a booking (idempotent when already at ``start``). Raises SlotTaken, BookingNotFound."""
        ...

    async def active_bookings(self) -> list[Booking]:
        """All of the tenant's active bookings, ascending by start (used by replay and the operator)."""
        ...

    async def block(self, start: datetime, minutes: int) -> None:
        """Mark time as busy (outside bookings made through the bot: a fixture's ``calendar.busy``)."""
        ...

    async def by_id(self, booking_id: str) -> Booking | None:
        """One booking by id, active or cancelled (reminders and their buttons read it)."""
        ...

    async def aclose(self) -> None:
        """Release what the backend holds open (HTTP clients)."""
        ...
