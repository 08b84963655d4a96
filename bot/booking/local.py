"""The embedded booking backend: working hours, service durations and a slot grid from config; bookings in SQL.

How double booking is made impossible
    Time is cut into cells of ``cell`` minutes (the gcd of the slot step, every service duration, every opening
    time and the timezone's UTC offsets), so every bookable slot starts and ends on a cell boundary. A booking
    inserts one ``booking_cells`` row per cell it covers, in the same transaction as the booking row; the primary
    key ``(tenant, cell)`` lets only one of two overlapping bookings commit, whichever process they come from.
    The loser's unique violation becomes :class:`SlotTaken` (in :meth:`LocalCalendar._writing`, the one place).
    Cancelling deletes the cells; rescheduling swaps them in one transaction. ``block()`` owns cells as
    ``block:<uuid>`` and is never listed as a booking.

    ``calendar_grids`` records the cell size a tenant's rows are laid out in. When the config changes so that the
    cell must shrink (say a 20-minute service is added), the existing cells are split to the new size; the size
    never grows, so every row laid out earlier stays exact. All processes should run the same config.

Decisions (beyond :class:`bot.booking.base.BookingBackend`)
    - ``book()`` is idempotent by key: an active booking with the key is returned as it is (even if the request
      differs); a cancelled one is reactivated under its id when its time is free.
    - A start that is not a bookable slot (closed day, outside hours, off the step grid, the service would run
      past closing) raises :class:`SlotTaken`, so the dialog offers alternatives, exactly as for a taken time.
    - Without a ``clock`` nothing depends on the real time (replays run at a frozen "now"). With one, ``book()``
      and ``reschedule()`` also refuse starts in the past or beyond the horizon, and ``customer_bookings()``
      leaves out bookings that are over. Without it, ``customer_bookings()`` lists every active booking.
    - Slots are offered on days from today up to today + ``horizon_days`` inclusive, every ``slot_step``
      minutes from each opening time, when the whole service fits before that range closes.
    - ``reschedule()`` of a cancelled booking raises :class:`BookingNotFound` (there is nothing left to move).
    - ``block()`` refuses (:class:`SlotTaken`) time that overlaps a booking; overlapping another block is fine.
    - An unknown service or a naive datetime raises :class:`BookingError` (a caller bug, not a customer's).

Availability cache
    Free times are read on most turns and change only when someone books, so a computed list of free times is
    kept for ``cache_seconds`` (0 turns it off). This instance's own writes, and any write that lost a race,
    drop the cache at once; another process's booking shows here at most ``cache_seconds`` late. That is safe:
    the database still decides every booking, and a time offered stale ends as "taken" with alternatives.
"""

from __future__ import annotations

import functools
import math
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, time, timedelta
from time import monotonic as time_monotonic
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.booking.base import Booking, BookingKind, BookingWritten, BookRequest, Clock
from bot.booking.records import BookingRecords
from bot.db import dialect_insert
from bot.exceptions import BookingError, BookingNotFound, SlotTaken, StorageError
from bot.settings import WEEKDAYS
from bot.tables import BOOKINGS, CELLS, GRIDS

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MINUTE = timedelta(minutes=1)
_BLOCK = "block:"
_RANGE = re.compile(r"^(\d\d):(\d\d)-(\d\d):(\d\d)$")

_CACHE_PRUNE_AT = 256  # free-slot answers held before the expired ones are swept


def _minutes(moment: datetime) -> int:
    """UTC minutes since the epoch, rounded down."""
    return (moment - _EPOCH) // _MINUTE


def _minutes_up(moment: datetime) -> int:
    """UTC minutes since the epoch, rounded up."""
    return -((_EPOCH - moment) // _MINUTE)


@functools.lru_cache(maxsize=65536)
def _local_time(at: int, tz: ZoneInfo) -> datetime:
    """UTC minutes to an aware local time; memoised because every free-slot query converts the same grid."""
    return datetime.fromtimestamp(at * 60, tz)


def _aware(moment: datetime, what: str) -> datetime:
    if moment.utcoffset() is None:
        raise BookingError(f"{what} must be timezone-aware, got {moment.isoformat()}")
    return moment


def _days(first: date, last: date) -> Iterator[date]:
    for offset in range((last - first).days + 1):
        yield first + timedelta(days=offset)


def _parse_hours(hours: dict[str, list[str]]) -> dict[int, tuple[tuple[int, int], ...]]:
    """weekday name -> ["HH:MM-HH:MM", ...] into weekday number -> ((open, close) in minutes of the day, ...)."""
    parsed: dict[int, tuple[tuple[int, int], ...]] = {}
    for day, ranges in hours.items():
        if day not in WEEKDAYS:
            raise BookingError(f"hours: unknown weekday {day!r} (use {', '.join(WEEKDAYS)})")
        parsed[WEEKDAYS.index(day)] = tuple(sorted(_parse_range(day, item) for item in ranges))
    return parsed


def _parse_range(day: str, item: str) -> tuple[int, int]:
    match = _RANGE.match(item)
    if match is None:
        raise BookingError(f"hours: {day}: {item!r} is not HH:MM-HH:MM")
    h1, m1, h2, m2 = (int(part) for part in match.groups())
    opens, closes = h1 * 60 + m1, h2 * 60 + m2
    if m1 >= 60 or m2 >= 60 or not 0 <= opens < closes <= 24 * 60:
        raise BookingError(f"hours: {day}: {item!r} is not a time range within one day")
    return opens, closes


def _cell_size(step: int, durations: list[int], hours: dict[int, tuple[tuple[int, int], ...]], tz: ZoneInfo) -> int:
    """The largest cell that every slot's start and end fall on, in UTC minutes, summer and winter alike."""
    year = datetime.now(UTC).year
    offsets = [tz.utcoffset(datetime(year, month, 1)) for month in (1, 7)]
    offset_minutes = [int(o.total_seconds()) // 60 for o in offsets if o is not None]
    opens = [opens for ranges in hours.values() for opens, _ in ranges]
    return math.gcd(step, *durations, *opens, *offset_minutes)


class LocalCalendar(BookingRecords):
    """One tenant's calendar in SQL (PostgreSQL or SQLite). See the module docstring for the rules."""

    def __init__(
        self,
        engine: AsyncEngine,
        tenant: str,
        tz: ZoneInfo,
        hours: dict[str, list[str]],
        services: dict[str, int],
        slot_step: int,
        horizon_days: int,
        *,
        clock: Clock | None = None,
        cache_seconds: float = 0.0,
        on_write: BookingWritten | None = None,
    ) -> None:
        if slot_step <= 0 or horizon_days < 0 or any(m <= 0 for m in services.values()):
            raise BookingError(f"{tenant}: slot step and service durations must be positive, horizon not negative")
        self.engine = engine
        self.tenant = tenant
        self.tz = tz
        self.services = dict(services)
        self.slot_step = slot_step
        self.horizon_days = horizon_days
        self.clock = clock
        self._hours = _parse_hours(hours)
        self._wanted_cell = _cell_size(slot_step, list(services.values()), self._hours, tz)
        self._cell = self._wanted_cell
        self._grid_ready = False
        self.cache_seconds = cache_seconds
        self.on_write = on_write
        # (service, first day, last day, earliest minute) -> (expires, free starts)
        self._free: dict[tuple[str, date, date, int], tuple[float, tuple[datetime, ...]]] = {}

    # -- read side -------------------------------------------------------------------------------------------

    async def free_slots(self, service: str, day_from: date, day_to: date, now: datetime) -> list[datetime]:
        minutes = self._duration(service)
        today = _aware(now, "now").astimezone(self.tz).date()
        first, last = max(day_from, today), min(day_to, today + timedelta(days=self.horizon_days))
        earliest = _minutes_up(now)
        key = (service, first, last, earliest)
        cached = self._free.get(key)
        if cached is not None and cached[0] > time_monotonic():
            return list(cached[1])
        starts = [s for day in _days(first, last) for s in self._starts(day, minutes) if s >= earliest]
        free: list[datetime] = []
        if starts:
            busy = await self._busy_cells(starts[0], starts[-1] + minutes)
            free = [self._local(s) for s in starts if busy.isdisjoint(range(s, s + minutes, self._cell))]
        if self.cache_seconds > 0:
            self._remember(key, tuple(free))
        return free

    def _remember(self, key: tuple[str, date, date, int], free: tuple[datetime, ...]) -> None:
        """Cache a free-slot answer. Keys carry the minute they were asked in, so old ones are dropped as new
        ones come: the cache holds what the last ``cache_seconds`` asked, not every minute since start-up."""
        now = time_monotonic()
        if len(self._free) >= _CACHE_PRUNE_AT:
            self._free = {k: v for k, v in self._free.items() if v[0] > now}
        self._free[key] = (now + self.cache_seconds, free)

    async def is_open(self, day: date) -> bool:
        return bool(self._hours.get(day.weekday()))

    async def aclose(self) -> None:
        """Nothing held open: the engine belongs to the runtime."""

    # -- write side ------------------------------------------------------------------------------------------

    async def book(self, request: BookRequest) -> Booking:
        minutes = self._duration(request.service)
        _aware(request.start, "start")
        try:
            async with self._writing() as (conn, cell):
                found = await self._find(conn, BOOKINGS.c.key == request.key)
                if found is not None and found.status == "active":
                    return found
                start = self._bookable(request.start, minutes)
                booking = self._new_booking(request, found.id if found else uuid.uuid4().hex, start, minutes)
                await self._save(conn, booking, reactivate=found is not None)
                await self._occupy(conn, booking.id, start, minutes, cell)
                await self._written(conn, "book", booking)
                return booking
        except SlotTaken:
            winner = await self._by_key(request.key)
            if winner is not None and winner.status == "active":  # the same request, made concurrently, won
                return winner
            raise

    async def cancel(self, booking_id: str) -> Booking:
        async with self._writing() as (conn, _cell):
            booking = await self._find(conn, BOOKINGS.c.id == booking_id, lock=True)
            if booking is None:
                raise BookingNotFound(f"{self.tenant}: no booking {booking_id!r}")
            if booking.status == "cancelled":
                return booking
            await self._update(conn, booking.id, status="cancelled")
            await self._release(conn, booking)
            cancelled = booking.model_copy(update={"status": "cancelled"})
            await self._written(conn, "cancel", cancelled)
            return cancelled

    async def reschedule(self, booking_id: str, start: datetime) -> Booking:
        _aware(start, "start")
        async with self._writing() as (conn, cell):
            booking = await self._find(conn, BOOKINGS.c.id == booking_id, lock=True)
            if booking is None or booking.status != "active":
                raise BookingNotFound(f"{self.tenant}: no active booking {booking_id!r}")
            if booking.start == start:
                return booking
            new_start = self._bookable(start, booking.minutes)
            await self._release(conn, booking)
            await self._occupy(conn, booking.id, new_start, booking.minutes, cell)
            await self._update(conn, booking.id, start_at=start)
            moved = booking.model_copy(update={"start": self._local(new_start)})
            await self._written(conn, "reschedule", moved)
            return moved

    async def _written(self, conn: AsyncConnection, kind: BookingKind, booking: Booking) -> None:
        """Let the ``on_write`` hook add its rows (CRM outbox) to the booking's own transaction."""
        if self.on_write is not None:
            await self.on_write(conn, kind, booking)

    async def block(self, start: datetime, minutes: int) -> None:
        if minutes <= 0:
            raise BookingError(f"{self.tenant}: cannot block {minutes} minutes")
        end = _aware(start, "start") + timedelta(minutes=minutes)
        owner = f"{_BLOCK}{uuid.uuid4().hex}"
        async with self._writing() as (conn, cell):
            first, last = _minutes(start), _minutes_up(end)
            lo, hi = first - first % cell, last + (-last % cell)
            held = await conn.execute(
                select(CELLS.c.cell, CELLS.c.owner).where(
                    CELLS.c.tenant == self.tenant, CELLS.c.cell >= lo, CELLS.c.cell < hi
                )
            )
            owners = {row.cell: row.owner for row in held}
            if any(not o.startswith(_BLOCK) for o in owners.values()):
                raise SlotTaken(f"{self.tenant}: {start.isoformat()} +{minutes} min overlaps a booking")
            cells = [c for c in range(lo, hi, cell) if c not in owners]
            if cells:
                await conn.execute(insert(CELLS), [{"tenant": self.tenant, "cell": c, "owner": owner} for c in cells])

    # -- slots -------------------------------------------------------------------------------------------------

    def _duration(self, service: str) -> int:
        try:
            return self.services[service]
        except KeyError:
            known = ", ".join(sorted(self.services))
            raise BookingError(f"{self.tenant}: unknown service {service!r} (known: {known})") from None

    def _starts(self, day: date, minutes: int) -> list[int]:
        """Start times (UTC minutes) on ``day`` at which a ``minutes``-long service fits in one working range."""
        midnight = datetime.combine(day, time(), self.tz)
        starts: list[int] = []
        for opens, closes in self._hours.get(day.weekday(), ()):
            first = _minutes(midnight + timedelta(minutes=opens))
            last = _minutes(midnight + timedelta(minutes=closes)) - minutes
            starts.extend(range(first, last + 1, self.slot_step))
        return starts

    def _bookable(self, start: datetime, minutes: int) -> int:
        """``start`` in UTC minutes if a ``minutes``-long booking may start then (time taken aside)."""
        day = start.astimezone(self.tz).date()
        at = _minutes(start)
        if start != _EPOCH + at * _MINUTE or at not in self._starts(day, minutes):
            raise SlotTaken(f"{self.tenant}: {start.isoformat()} is not a bookable {minutes}-minute slot")
        if self.clock is not None:
            now = self.clock()
            if at < _minutes_up(now) or day > now.astimezone(self.tz).date() + timedelta(days=self.horizon_days):
                raise SlotTaken(f"{self.tenant}: {start.isoformat()} is in the past or beyond the horizon")
        return at

    def _local(self, at: int) -> datetime:
        return _local_time(at, self.tz)

    # -- storage -----------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[tuple[AsyncConnection, int]]:
        """A write transaction on the calendar, with the tenant's cell size (held steady until commit).

        The one place where the database's unique violation (asyncpg's or sqlite3's, as SQLAlchemy's
        ``IntegrityError``) becomes :class:`SlotTaken`.
        """
        await self._ensure_grid()
        try:
            async with self.engine.begin() as conn:
                cell = await conn.scalar(
                    select(GRIDS.c.cell).where(GRIDS.c.tenant == self.tenant).with_for_update(read=True)
                )
                if cell is None or self._wanted_cell % cell:
                    raise StorageError(f"{self.tenant}: the calendar grid changed under this process; restart it")
                self._cell = cell
                yield conn, cell
        except IntegrityError as exc:
            raise SlotTaken(f"{self.tenant}: that time is no longer free") from exc
        finally:
            # Whatever happened (committed, or lost a race: then the cache was stale), read afresh from now on.
            self._free.clear()

    async def _ensure_grid(self) -> None:
        """Make the stored cell size divide ours, splitting existing cells if it must shrink. Once per instance."""
        if self._grid_ready:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                dialect_insert(conn, GRIDS).values(tenant=self.tenant, cell=self._wanted_cell).on_conflict_do_nothing()
            )
            query = select(GRIDS.c.cell).where(GRIDS.c.tenant == self.tenant).with_for_update()
            stored = await conn.scalar(query) or self._wanted_cell
            cell = math.gcd(stored, self._wanted_cell)
            if cell != stored:
                await self._split_cells(conn, stored, cell)
                await conn.execute(update(GRIDS).where(GRIDS.c.tenant == self.tenant).values(cell=cell))
        self._cell = cell
        self._grid_ready = True

    async def _split_cells(self, conn: AsyncConnection, old: int, new: int) -> None:
        rows = (await conn.execute(select(CELLS.c.cell, CELLS.c.owner).where(CELLS.c.tenant == self.tenant))).all()
        extra = [
            {"tenant": self.tenant, "cell": row.cell + k, "owner": row.owner}
            for row in rows
            for k in range(new, old, new)
        ]
        if extra:
            await conn.execute(insert(CELLS), extra)

    async def _busy_cells(self, lo: int, hi: int) -> frozenset[int]:
        await self._ensure_grid()
        async with self.engine.connect() as conn:
            # One statement needs no transaction: autocommit saves the BEGIN and ROLLBACK round trips.
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            rows = await conn.execute(
                select(CELLS.c.cell).where(CELLS.c.tenant == self.tenant, CELLS.c.cell >= lo, CELLS.c.cell < hi)
            )
            return frozenset(rows.scalars())

    async def _occupy(self, conn: AsyncConnection, owner: str, start: int, minutes: int, cell: int) -> None:
        cells = [{"tenant": self.tenant, "cell": c, "owner": owner} for c in range(start, start + minutes, cell)]
        await conn.execute(insert(CELLS), cells)

    async def _release(self, conn: AsyncConnection, booking: Booking) -> None:
        start = _minutes(booking.start)
        await conn.execute(
            delete(CELLS).where(
                CELLS.c.tenant == self.tenant,
                CELLS.c.cell >= start,
                CELLS.c.cell < start + booking.minutes,
                CELLS.c.owner == booking.id,
            )
        )

    def _new_booking(self, request: BookRequest, booking_id: str, start: int, minutes: int) -> Booking:
        return Booking(
            id=booking_id,
            tenant=self.tenant,
            key=request.key,
            customer=request.customer,
            service=request.service,
            start=self._local(start),
            minutes=minutes,
            name=request.name,
            phone=request.phone,
            email=request.email,
        )

    async def _save(self, conn: AsyncConnection, booking: Booking, *, reactivate: bool) -> None:
        now = datetime.now(UTC)
        values = {
            "customer": booking.customer,
            "service": booking.service,
            "start_at": booking.start,
            "minutes": booking.minutes,
            "name": booking.name,
            "phone": booking.phone,
            "email": booking.email,
            "status": "active",
            "updated_at": now,
        }
        if not reactivate:
            await conn.execute(
                insert(BOOKINGS).values(id=booking.id, tenant=self.tenant, key=booking.key, created_at=now, **values)
            )
            return
        result = await conn.execute(
            update(BOOKINGS)
            .where(BOOKINGS.c.tenant == self.tenant, BOOKINGS.c.id == booking.id, BOOKINGS.c.status == "cancelled")
            .values(**values)
        )
        if result.rowcount == 0:
            raise SlotTaken(f"{self.tenant}: booking {booking.id} was reactivated concurrently")

    async def _update(self, conn: AsyncConnection, booking_id: str, **values: Any) -> None:
        await conn.execute(
            update(BOOKINGS)
            .where(BOOKINGS.c.tenant == self.tenant, BOOKINGS.c.id == booking_id)
            .values(updated_at=datetime.now(UTC), **values)
        )

    async def _by_key(self, key: str) -> Booking | None:
        async with self.engine.connect() as conn:
            return await self._find(conn, BOOKINGS.c.key == key)
