"""The embedded `local` booking backend on the real PostgreSQL (and its basics once more on SQLite).

Every test works in its own uuid-named tenants, removed afterwards, so concurrent runs never meet.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import delete, event, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from bot.booking.base import Booking, BookRequest
from bot.booking.local import LocalCalendar
from bot.exceptions import BookingError, BookingNotFound, SlotTaken
from bot.tables import TENANT_TABLES, BookingCell

LONDON = ZoneInfo("Europe/London")
DEMO_HOURS = {day: ["10:00-20:00"] for day in ("mon", "tue", "wed", "thu", "fri", "sat")}
DEMO_SERVICES = {"haircut": 60, "manicure": 45, "colouring": 120}
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # Monday
TUESDAY = date(2026, 11, 24)
SUNDAY = date(2026, 11, 29)
ROOT = Path(__file__).resolve().parents[1]

MakeCalendar = Callable[..., LocalCalendar]


def at(day: date, hhmm: str, tz: ZoneInfo = LONDON) -> datetime:
    hour, minute = map(int, hhmm.split(":"))
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)


def hhmm(slots: list[datetime]) -> list[str]:
    return [s.strftime("%H:%M") for s in slots]


def request(
    start: datetime, *, service: str = "haircut", key: str | None = None, customer: str = "tg:1"
) -> BookRequest:
    return BookRequest(
        key=key or f"{customer}:{service}:{start.isoformat()}",
        customer=customer,
        service=service,
        start=start,
        name="John",
        phone="+447700900123",
    )


async def purge(engine: AsyncEngine, tenants: list[str]) -> None:
    async with engine.begin() as conn:
        for table in TENANT_TABLES:
            await conn.execute(delete(table).where(table.c.tenant.in_(tenants)))


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest) -> AsyncEngine:
    name = "pg_engine" if request.param == "postgresql" else "sqlite_engine"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


async def _calendars(engine: AsyncEngine) -> AsyncIterator[MakeCalendar]:
    made: list[str] = []

    def make(tenant: str | None = None, **overrides: object) -> LocalCalendar:
        tenant = tenant or f"test-{uuid.uuid4().hex[:12]}"
        made.append(tenant)
        options: dict[str, object] = {
            "tz": LONDON,
            "hours": DEMO_HOURS,
            "services": DEMO_SERVICES,
            "slot_step": 30,
            "horizon_days": 30,
        }
        options.update(overrides)
        return LocalCalendar(engine, tenant, **options)  # type: ignore[arg-type]

    yield make
    await purge(engine, made)


@pytest.fixture
async def calendars(engine: AsyncEngine) -> AsyncIterator[MakeCalendar]:
    """Demo-tenant calendars (Europe/London, Mon-Sat 10-20, step 30) on PostgreSQL and on SQLite."""
    async for make in _calendars(engine):
        yield make


@pytest.fixture
async def pg_calendars(pg_engine: AsyncEngine) -> AsyncIterator[MakeCalendar]:
    async for make in _calendars(pg_engine):
        yield make


# -- free slots ------------------------------------------------------------------------------------------------


async def test_availability_cache_is_reused_until_a_write_of_ours_or_its_expiry(calendars: MakeCalendar) -> None:
    """Another process's booking shows up after ``cache_seconds``; this instance's own write at once."""
    ours = calendars(cache_seconds=0.5)
    theirs = calendars(ours.tenant)  # the same tenant in another process
    assert "17:00" in hhmm(await ours.free_slots("haircut", TUESDAY, TUESDAY, NOW))
    await theirs.book(request(at(TUESDAY, "17:00"), customer="tg:2"))
    assert "17:00" in hhmm(await ours.free_slots("haircut", TUESDAY, TUESDAY, NOW))  # still the cached answer
    await asyncio.sleep(0.6)
    assert "17:00" not in hhmm(await ours.free_slots("haircut", TUESDAY, TUESDAY, NOW))  # expired: read afresh
    await ours.free_slots("haircut", TUESDAY, TUESDAY, NOW)  # cached again
    await ours.book(request(at(TUESDAY, "11:00")))
    assert "11:00" not in hhmm(await ours.free_slots("haircut", TUESDAY, TUESDAY, NOW))  # our write: no wait


async def test_availability_cache_forgets_old_answers(calendars: MakeCalendar) -> None:
    """Each minute asks under a new key; expired answers are swept, so a long-running process stays small."""
    cal = calendars(cache_seconds=0.05)
    for minute in range(300):
        await cal.free_slots("haircut", TUESDAY, TUESDAY, NOW + timedelta(minutes=minute))
        if minute == 150:
            await asyncio.sleep(0.1)  # everything cached so far expires
    assert len(cal._free) <= 256




async def test_free_slots_follow_hours_step_and_duration(calendars: MakeCalendar) -> None:
    cal = calendars()
    haircut = await cal.free_slots("haircut", TUESDAY, TUESDAY, NOW)
    assert hhmm(haircut) == [f"{h:02d}:{m:02d}" for h in range(10, 20) for m in (0, 30)][:-1]  # last start 19:00
    assert all(s.tzinfo == LONDON for s in haircut)
    assert haircut[0] == datetime(2026, 11, 24, 10, 0, tzinfo=UTC)  # GMT in November
    assert hhmm(await cal.free_slots("colouring", TUESDAY, TUESDAY, NOW))[-1] == "18:00"
    assert hhmm(await cal.free_slots("manicure", TUESDAY, TUESDAY, NOW))[-1] == "19:00"  # 19:30 would end 20:15


async def test_free_slots_never_before_now(calendars: MakeCalendar) -> None:
    cal = calendars()
    assert hhmm(await cal.free_slots("haircut", TUESDAY, TUESDAY, at(TUESDAY, "13:10")))[0] == "13:30"
    assert hhmm(await cal.free_slots("haircut", TUESDAY, TUESDAY, at(TUESDAY, "13:30")))[0] == "13:30"
    assert await cal.free_slots("haircut", TUESDAY, TUESDAY, at(TUESDAY, "19:01")) == []
    assert await cal.free_slots("haircut", date(2026, 11, 20), date(2026, 11, 22), NOW) == []  # all in the past


async def test_closed_days_and_horizon(calendars: MakeCalendar) -> None:
    cal = calendars(horizon_days=7)
    assert await cal.free_slots("haircut", SUNDAY, SUNDAY, NOW) == []
    assert not await cal.is_open(SUNDAY)
    assert await cal.is_open(TUESDAY)
    week = await cal.free_slots("haircut", date(2026, 11, 23), date(2026, 12, 31), NOW)
    days = sorted({s.date() for s in week})
    assert days == [date(2026, 11, d) for d in (23, 24, 25, 26, 27, 28, 30)]  # Sunday closed, horizon 7 days
    assert week == sorted(week)


async def test_bookings_and_blocks_take_overlapping_slots(calendars: MakeCalendar) -> None:
    cal = calendars()
    await cal.book(request(at(TUESDAY, "15:00")))
    await cal.block(at(TUESDAY, "12:00"), 30)
    haircut = hhmm(await cal.free_slots("haircut", TUESDAY, TUESDAY, NOW))
    assert "14:00" in haircut and "16:00" in haircut and "12:30" in haircut and "11:00" in haircut
    for taken in ("11:30", "12:00", "14:30", "15:00", "15:30"):
        assert taken not in haircut
    manicure = hhmm(await cal.free_slots("manicure", TUESDAY, TUESDAY, NOW))
    assert "14:00" in manicure and "11:00" in manicure  # 14:00-14:45 and 11:00-11:45 fit
    assert "14:30" not in manicure and "11:30" not in manicure
    assert [b.start for b in await cal.active_bookings()] == [at(TUESDAY, "15:00")]  # blocks are not bookings


async def test_summer_time_and_dst_switch(calendars: MakeCalendar) -> None:
    cal = calendars(hours={"sun": ["00:00-04:00"], "tue": ["10:00-12:00"]}, horizon_days=400)
    july = date(2027, 7, 13)
    slots = await cal.free_slots("haircut", july, july, NOW)
    assert hhmm(slots) == ["10:00", "10:30", "11:00"]
    assert slots[0] == datetime(2027, 7, 13, 9, 0, tzinfo=UTC)  # BST
    switch = date(2027, 3, 28)  # clocks go forward at 01:00 GMT: 01:00-02:00 local does not exist
    assert hhmm(await cal.free_slots("haircut", switch, switch, NOW)) == ["00:00", "00:30", "02:00", "02:30", "03:00"]


async def test_half_hour_timezone_keeps_adjacent_bookings_apart(calendars: MakeCalendar) -> None:
    kolkata = ZoneInfo("Asia/Kolkata")  # UTC+05:30: the grid must follow the offset
    cal = calendars(tz=kolkata, hours={"tue": ["10:00-12:00"]}, services={"haircut": 60}, slot_step=60)
    await cal.book(request(at(TUESDAY, "10:00", kolkata)))
    await cal.book(request(at(TUESDAY, "11:00", kolkata)))
    assert await cal.free_slots("haircut", TUESDAY, TUESDAY, NOW) == []


# -- booking ---------------------------------------------------------------------------------------------------


async def test_book_is_idempotent_by_key(calendars: MakeCalendar) -> None:
    cal = calendars()
    first = await cal.book(request(at(TUESDAY, "17:00"), key="k1"))
    again = await cal.book(request(at(TUESDAY, "17:00"), key="k1"))
    assert again == first and first.status == "active" and first.start == at(TUESDAY, "17:00")
    assert first.start.tzinfo == LONDON and first.minutes == 60
    with pytest.raises(SlotTaken):
        await cal.book(request(at(TUESDAY, "17:00"), key="k2", customer="tg:2"))
    assert [b.id for b in await cal.active_bookings()] == [first.id]


async def test_unbookable_starts_are_refused(calendars: MakeCalendar) -> None:
    cal = calendars()
    for start, service in [
        (at(TUESDAY, "09:30"), "haircut"),  # before opening
        (at(TUESDAY, "10:15"), "haircut"),  # off the 30-minute grid
        (at(TUESDAY, "19:00"), "colouring"),  # would run until 21:00
        (at(SUNDAY, "12:00"), "haircut"),  # closed
        (at(TUESDAY, "12:00") + timedelta(seconds=1), "haircut"),
    ]:
        with pytest.raises(SlotTaken):
            await cal.book(request(start, service=service))
    with pytest.raises(BookingError, match="unknown service"):
        await cal.book(request(at(TUESDAY, "12:00"), service="massage"))
    with pytest.raises(BookingError, match="timezone-aware"):
        await cal.book(request(datetime(2026, 11, 24, 12, 0)))
    with pytest.raises(BookingError, match="unknown service"):
        await cal.free_slots("massage", TUESDAY, TUESDAY, NOW)
    assert await cal.active_bookings() == []


async def test_cancel_frees_the_slot_and_rebooking_reactivates(calendars: MakeCalendar) -> None:
    cal = calendars()
    booking = await cal.book(request(at(TUESDAY, "17:00"), key="k1"))
    cancelled = await cal.cancel(booking.id)
    assert cancelled.status == "cancelled" and cancelled.id == booking.id
    assert (await cal.cancel(booking.id)).status == "cancelled"  # idempotent
    assert await cal.active_bookings() == []
    assert "17:00" in hhmm(await cal.free_slots("haircut", TUESDAY, TUESDAY, NOW))
    again = await cal.book(request(at(TUESDAY, "17:00"), key="k1"))
    assert again.id == booking.id and again.status == "active"
    assert "17:00" not in hhmm(await cal.free_slots("haircut", TUESDAY, TUESDAY, NOW))


async def test_reschedule(calendars: MakeCalendar) -> None:
    cal = calendars()
    booking = await cal.book(request(at(TUESDAY, "17:00")))
    other = await cal.book(request(at(TUESDAY, "12:00"), customer="tg:2"))
    moved = await cal.reschedule(booking.id, at(TUESDAY, "14:00"))
    assert moved.id == booking.id and moved.start == at(TUESDAY, "14:00")
    assert await cal.reschedule(booking.id, at(TUESDAY, "14:00")) == moved  # idempotent
    free = hhmm(await cal.free_slots("haircut", TUESDAY, TUESDAY, NOW))
    assert "17:00" in free and "14:00" not in free and "13:30" not in free
    with pytest.raises(SlotTaken):
        await cal.reschedule(booking.id, at(TUESDAY, "12:30"))  # overlaps the other booking
    with pytest.raises(SlotTaken):
        await cal.reschedule(booking.id, at(SUNDAY, "12:00"))
    assert [(b.id, b.start) for b in await cal.active_bookings()] == [
        (other.id, at(TUESDAY, "12:00")),
        (booking.id, at(TUESDAY, "14:00")),
    ]
    with pytest.raises(BookingNotFound):
        await cal.reschedule("no-such-booking", at(TUESDAY, "16:00"))
    await cal.cancel(other.id)
    with pytest.raises(BookingNotFound):
        await cal.reschedule(other.id, at(TUESDAY, "16:00"))
    with pytest.raises(BookingNotFound):
        await cal.cancel("no-such-booking")


async def test_customer_bookings(calendars: MakeCalendar) -> None:
    cal = calendars()
    late = await cal.book(request(at(TUESDAY, "17:00")))
    early = await cal.book(request(at(TUESDAY, "11:00"), service="manicure"))
    gone = await cal.book(request(at(TUESDAY, "13:00")))
    await cal.book(request(at(TUESDAY, "15:00"), customer="tg:2"))
    await cal.cancel(gone.id)
    assert await cal.customer_bookings("tg:1") == [early.view(), late.view()]
    assert await cal.customer_bookings("tg:nobody") == []


async def test_clock_refuses_the_past_and_hides_finished_bookings(calendars: MakeCalendar) -> None:
    clock_now = [at(TUESDAY, "09:00")]
    cal = calendars(clock=lambda: clock_now[0])
    morning = await cal.book(request(at(TUESDAY, "10:00")))
    clock_now[0] = at(TUESDAY, "12:00")
    with pytest.raises(SlotTaken, match="past"):
        await cal.book(request(at(TUESDAY, "11:00")))
    with pytest.raises(SlotTaken, match="horizon"):
        await cal.book(request(at(TUESDAY + timedelta(days=35), "11:00")))
    assert morning.view() not in await cal.customer_bookings("tg:1")
    afternoon = await cal.book(request(at(TUESDAY, "15:00")))
    assert await cal.customer_bookings("tg:1") == [afternoon.view()]
    assert (await cal.book(request(at(TUESDAY, "10:00")))).id == morning.id  # a late retry still answers


async def test_tenants_are_isolated(calendars: MakeCalendar) -> None:
    a, b = calendars(), calendars()
    booking = await a.book(request(at(TUESDAY, "17:00")))
    with pytest.raises(BookingNotFound):
        await b.cancel(booking.id)
    with pytest.raises(BookingNotFound):
        await b.reschedule(booking.id, at(TUESDAY, "18:00"))
    assert "17:00" in hhmm(await b.free_slots("haircut", TUESDAY, TUESDAY, NOW))
    assert (await b.book(request(at(TUESDAY, "17:00")))).id != booking.id  # same key, other tenant
    assert [x.id for x in await a.active_bookings()] == [booking.id]


async def test_blocks(calendars: MakeCalendar) -> None:
    cal = calendars()
    await cal.block(at(TUESDAY, "10:00"), 90)
    await cal.block(at(TUESDAY, "11:00"), 60)  # overlapping another block is fine
    await cal.block(at(TUESDAY, "13:07"), 10)  # off the grid: the whole 13:00-13:15 cell is busy
    free = hhmm(await cal.free_slots("haircut", TUESDAY, TUESDAY, NOW))
    assert free[:3] == ["12:00", "13:30", "14:00"]  # 12:30-13:30 would touch the 13:07 block
    await cal.book(request(at(TUESDAY, "15:00")))
    with pytest.raises(SlotTaken, match="overlaps a booking"):
        await cal.block(at(TUESDAY, "15:30"), 30)
    with pytest.raises(BookingError):
        await cal.block(at(TUESDAY, "16:00"), 0)


async def test_config_change_splits_the_grid(calendars: MakeCalendar) -> None:
    tenant = f"test-{uuid.uuid4().hex[:12]}"
    hourly = calendars(tenant, services={"haircut": 60}, slot_step=60)
    booking = await hourly.book(request(at(TUESDAY, "10:00")))
    finer = calendars(tenant, services={"haircut": 60, "trim": 20}, slot_step=20)  # cell 60 -> 20
    trims = hhmm(await finer.free_slots("trim", TUESDAY, TUESDAY, NOW))
    assert trims[:2] == ["11:00", "11:20"]
    with pytest.raises(SlotTaken):
        await finer.book(request(at(TUESDAY, "10:40"), service="trim"))
    await finer.cancel(booking.id)
    assert hhmm(await finer.free_slots("trim", TUESDAY, TUESDAY, NOW))[0] == "10:00"
    assert (await finer.book(request(at(TUESDAY, "10:20"), service="trim"))).minutes == 20


async def test_free_slots_is_one_query(pg_calendars: MakeCalendar, pg_engine: AsyncEngine) -> None:
    cal = pg_calendars()
    await cal.book(request(at(TUESDAY, "15:00")))
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(pg_engine.sync_engine, "before_cursor_execute", count)
    try:
        slots = await cal.free_slots("haircut", TUESDAY, TUESDAY + timedelta(days=3), NOW)
    finally:
        event.remove(pg_engine.sync_engine, "before_cursor_execute", count)
    assert len(slots) == 19 * 4 - 3
    assert len(statements) == 1 and statements[0].lstrip().upper().startswith("SELECT")


# -- the race for the last slot ----------------------------------------------------------------------------------


async def _only_slot_left(cal: LocalCalendar, day: date = TUESDAY) -> None:
    """Block the whole day except 17:00-18:00."""
    await cal.block(at(day, "10:00"), 7 * 60)
    await cal.block(at(day, "18:00"), 2 * 60)
    assert hhmm(await cal.free_slots("haircut", day, day, NOW)) == ["17:00"]


async def _race(books: list[asyncio.Future[Booking] | asyncio.Task[Booking]]) -> tuple[list[Booking], int]:
    results = await asyncio.gather(*books, return_exceptions=True)
    won = [r for r in results if isinstance(r, Booking)]
    taken = [r for r in results if isinstance(r, SlotTaken)]
    assert len(won) + len(taken) == len(results), [r for r in results if not isinstance(r, Booking | SlotTaken)]
    return won, len(taken)


async def test_race_for_the_last_slot(calendars: MakeCalendar) -> None:
    cal = calendars()
    await _only_slot_left(cal)
    customers = [f"tg:{n}" for n in range(20)]
    won, taken = await _race(
        [asyncio.ensure_future(cal.book(request(at(TUESDAY, "17:00"), customer=c))) for c in customers]
    )
    assert len(won) == 1 and taken == 19
    assert await cal.free_slots("haircut", TUESDAY, TUESDAY, NOW) == []
    assert [b.id for b in await cal.active_bookings()] == [won[0].id]


async def test_race_with_the_same_key_books_once(calendars: MakeCalendar) -> None:
    cal = calendars()
    won, taken = await _race(
        [asyncio.ensure_future(cal.book(request(at(TUESDAY, "17:00"), key="k"))) for _ in range(10)]
    )
    assert taken == 0 and len({b.id for b in won}) == 1
    assert len(await cal.active_bookings()) == 1


async def test_overlapping_starts_conflict(pg_calendars: MakeCalendar) -> None:
    for _ in range(5):
        cal = pg_calendars()
        won, taken = await _race(
            [
                asyncio.ensure_future(cal.book(request(at(TUESDAY, "17:00"), service="haircut", customer="tg:1"))),
                asyncio.ensure_future(cal.book(request(at(TUESDAY, "17:30"), service="manicure", customer="tg:2"))),
            ]
        )
        assert len(won) == 1 and taken == 1


RACER = """
import asyncio, json, sys
from datetime import datetime
from zoneinfo import ZoneInfo
from sqlmodel import col

from bot.booking.base import BookRequest
from bot.booking.local import LocalCalendar
from bot.db import make_engine
from bot.exceptions import SlotTaken

async def main(url, tenant, start, prefix, count):
    engine = make_engine(url, pool_size=count)
    hours = {d: ["10:00-20:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat")}
    cal = LocalCalendar(engine, tenant, ZoneInfo("Europe/London"), hours, {"haircut": 60}, 30, 30)
    await cal.active_bookings()
    async with engine.connect():  # warm the pool so the start line is fair
        pass
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    async def one(n):
        req = BookRequest(key=f"{prefix}{n}", customer=f"{prefix}{n}", service="haircut",
                          start=datetime.fromisoformat(start), name="N", phone="+447700900123")
        try:
            return (await cal.book(req)).id
        except SlotTaken:
            return None
    ids = await asyncio.gather(*(one(n) for n in range(count)))
    print(json.dumps([i for i in ids if i]), flush=True)
    await engine.dispose()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
"""


async def test_race_for_the_last_slot_from_two_processes(
    pg_calendars: MakeCalendar, services_env: dict[str, str]
) -> None:
    cal = pg_calendars()
    await _only_slot_left(cal)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RACER,
            services_env["DATABASE_URL"],
            cal.tenant,
            at(TUESDAY, "17:00").isoformat(),
            f"p{n}-",
            "10",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        for n in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None
        # The start line is "ready" from both, however long a loaded machine takes to get there.
        assert (await asyncio.wait_for(proc.stdout.readline(), 180)).strip() == b"ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    outputs = [await asyncio.wait_for(proc.communicate(), 180) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    won = [booking_id for out, _ in outputs for booking_id in json.loads(out)]
    assert len(won) == 1
    assert [b.id for b in await cal.active_bookings()] == won
    async with cal.engine.connect() as conn:
        owners = await conn.execute(
            select(col(BookingCell.owner)).where(
                col(BookingCell.tenant) == cal.tenant, col(BookingCell.owner).not_like("block:%")
            )
        )
        assert list(owners.scalars()) == won * 4  # 60 minutes in 15-minute cells, all the winner's
