"""The cal.com backend against the cal.com double (real HTTP on loopback) and the real PostgreSQL.

Every request the backend sends in these tests is checked against the published OpenAPI spec afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from uuid import uuid4
from zoneinfo import ZoneInfo

import httpx
import pytest
from calcom_setup import API_KEY, EVENT_TYPES, MINUTES, demo_double
from contract import problems
from doubles.calcom import NOT_AVAILABLE, CalcomDouble
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.booking.base import BookRequest
from bot.booking.calcom import CalcomCalendar, CalcomClient, RetryPolicy, calcom_error
from bot.exceptions import BackendUnavailable, BookingError, BookingNotFound, RateLimited, SlotTaken
from bot.settings import CalcomConfig
from bot.tables import BOOKINGS

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # a Monday
LONDON = ZoneInfo("Europe/London")
HOURS = {d: ["10:00-20:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat")}
FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, timeout=5.0)


@pytest.fixture
async def double() -> AsyncIterator[CalcomDouble]:
    async with demo_double(now=lambda: NOW) as d:
        yield d
        wrong = [p for r in d.requests for p in problems(r.method, r.path, r.query, r.headers, r.body or None)]
        assert wrong == [], wrong


def calendar(engine: AsyncEngine, url: str, *, tenant: str | None = None, cache: float = 2.0) -> CalcomCalendar:
    cfg = CalcomConfig(api_base=url, api_key=API_KEY, webhook_secret="s", event_types=EVENT_TYPES)
    return CalcomCalendar(
        engine, tenant or f"calcom-{uuid4().hex[:8]}", LONDON, HOURS, dict(MINUTES), cfg,
        cache_seconds=cache, client=CalcomClient(cfg, FAST),
    )  # fmt: skip


@pytest.fixture
async def cal(pg_engine: AsyncEngine, double: CalcomDouble) -> AsyncIterator[CalcomCalendar]:
    backend = calendar(pg_engine, double.url)
    yield backend
    await backend.aclose()
    async with pg_engine.begin() as conn:
        await conn.execute(delete(BOOKINGS).where(BOOKINGS.c.tenant == backend.tenant))


def request(start: datetime, key: str = "k1", **extra: str) -> BookRequest:
    fields = {"customer": "telegram:42", "service": "haircut", "name": "John", "phone": "+447700900123", **extra}
    return BookRequest(key=key, start=start, **fields)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=LONDON)


def creates(double: CalcomDouble) -> int:
    return len(double.calls_to("POST /v2/bookings"))


async def test_free_slots_one_call_for_a_week_in_utc_instants(cal: CalcomCalendar, double: CalcomDouble) -> None:
    monday = await cal.free_slots("haircut", date(2026, 11, 23), date(2026, 11, 23), NOW)
    friday = await cal.free_slots("haircut", date(2026, 11, 27), date(2026, 11, 27), NOW)
    assert monday[0] == at(23, 10) and monday[-1] == at(23, 19)
    assert friday[0] == at(27, 10) and all(s.tzinfo == LONDON for s in friday)
    [call] = double.calls_to("GET /v2/slots")
    assert call.params["start"] == "2026-11-23T00:00:00.000Z" and call.params["end"] == "2026-11-30T00:00:00.000Z"
    assert call.params["timeZone"] == "Europe/London" and call.headers["cal-api-version"] == "2024-09-04"


async def test_local_days_in_a_far_timezone_become_utc_instants(pg_engine: AsyncEngine, double: CalcomDouble) -> None:
    backend = calendar(pg_engine, double.url)
    backend.tz = ZoneInfo("Pacific/Auckland")  # UTC+13 in November: the local day starts the day before in UTC
    try:
        await backend.free_slots("haircut", date(2026, 11, 25), date(2026, 11, 25), NOW)
    finally:
        await backend.aclose()
    [call] = double.calls_to("GET /v2/slots")
    assert call.params["start"] == "2026-11-24T11:00:00.000Z"


async def test_concurrent_askers_share_one_slots_call(cal: CalcomCalendar, double: CalcomDouble) -> None:
    answers = await asyncio.gather(*(cal.free_slots("manicure", NOW.date(), NOW.date(), NOW) for _ in range(20)))
    assert len({tuple(a) for a in answers}) == 1
    assert len(double.calls_to("GET /v2/slots")) == 1


async def test_book_records_and_is_idempotent_by_key(cal: CalcomCalendar, double: CalcomDouble) -> None:
    first = await cal.book(request(at(24, 17)))
    again = await cal.book(request(at(24, 17)))
    assert first == again and first.start == at(24, 17) and first.status == "active"
    assert creates(double) == 1
    [made] = double.accepted()
    assert made.uid == first.id and made.metadata == {"tenant": cal.tenant, "conversation": "telegram:42", "key": "k1"}
    body = double.calls_to("POST /v2/bookings")[0]
    assert body.params["attendee"]["email"] == "telegram-42@no-email.invalid"
    assert [b.id for b in await cal.active_bookings()] == [first.id]
    assert [b.id for b in await cal.customer_bookings("telegram:42")] == [first.id]


async def test_own_booking_leaves_the_cached_answer_at_once(cal: CalcomCalendar, double: CalcomDouble) -> None:
    day = date(2026, 11, 24)
    assert at(24, 17) in await cal.free_slots("haircut", day, day, NOW)
    await cal.book(request(at(24, 17)))
    after = await cal.free_slots("haircut", day, day, NOW)
    assert at(24, 17) not in after and at(24, 16, 30) not in after and at(24, 16) in after
    assert len(double.calls_to("GET /v2/slots")) == 1


async def test_lost_create_is_reconciled_by_its_metadata_key(cal: CalcomCalendar, double: CalcomDouble) -> None:
    double.lose_next = 1  # cal.com makes the booking, then answers 500
    booking = await cal.book(request(at(24, 17), email="john@example.com"))
    assert [b.uid for b in double.accepted()] == [booking.id]
    assert creates(double) == 1  # found by its key: never sent twice
    [search] = double.calls_to("GET /v2/bookings")
    assert search.params["attendeeEmail"] == "john@example.com" and search.params["eventTypeId"] == "1001"


async def test_create_that_failed_is_retried_after_looking(cal: CalcomCalendar, double: CalcomDouble) -> None:
    double.fail_next(1, status=503)
    booking = await cal.book(request(at(24, 17)))
    assert [b.uid for b in double.accepted()] == [booking.id]
    assert creates(double) == 2 and len(double.calls_to("GET /v2/bookings")) == 1


async def test_time_taken_by_our_own_lost_create_is_ours(cal: CalcomCalendar, double: CalcomDouble) -> None:
    earlier = double.create_in_ui(EVENT_TYPES["haircut"], at(24, 17),
                                  {"name": "John", "email": "telegram-42@no-email.invalid"},
                                  {"tenant": cal.tenant, "conversation": "telegram:42", "key": "k1"})  # fmt: skip
    booking = await cal.book(request(at(24, 17)))
    assert booking.id == earlier.uid and [b.uid for b in double.accepted()] == [earlier.uid]
    assert [b.id for b in await cal.active_bookings()] == [earlier.uid]


async def test_calcom_down_raises_backend_unavailable(cal: CalcomCalendar, double: CalcomDouble) -> None:
    double.fail_next(50, status=502)
    with pytest.raises(BackendUnavailable):
        await cal.book(request(at(24, 17)))
    assert double.accepted() == [] and await cal.active_bookings() == []


async def test_taken_time_is_slot_taken_and_drops_the_cache(cal: CalcomCalendar, double: CalcomDouble) -> None:
    day = date(2026, 11, 24)
    assert at(24, 17) in await cal.free_slots("haircut", day, day, NOW)
    double.create_in_ui(EVENT_TYPES["haircut"], at(24, 17), {"name": "Other", "email": "o@example.com"})
    with pytest.raises(SlotTaken):
        await cal.book(request(at(24, 17)))
    assert at(24, 17) not in await cal.free_slots("haircut", day, day, NOW)  # fresh alternatives
    assert len(double.calls_to("GET /v2/slots")) == 2


async def test_cancel_and_reschedule(cal: CalcomCalendar, double: CalcomDouble) -> None:
    booking = await cal.book(request(at(24, 17)))
    moved = await cal.reschedule(booking.id, at(27, 12))
    assert moved.id != booking.id and moved.start == at(27, 12) and moved.key == booking.key
    assert double.bookings[booking.id].status == "cancelled" and double.bookings[moved.id].status == "accepted"
    assert await cal.reschedule(moved.id, at(27, 12)) == moved  # already there: no call
    with pytest.raises(BookingNotFound):
        await cal.reschedule(booking.id, at(27, 13))
    cancelled = await cal.cancel(moved.id)
    assert cancelled.status == "cancelled" and double.accepted() == []
    assert double.calls_to(f"POST /v2/bookings/{moved.id}/cancel")[0].params["cancellationReason"]
    assert (await cal.cancel(moved.id)).status == "cancelled"  # idempotent, no second call
    assert len(double.calls_to(f"POST /v2/bookings/{moved.id}/cancel")) == 1
    assert await cal.active_bookings() == []


async def test_cancel_already_cancelled_in_calcom_counts_as_done(cal: CalcomCalendar, double: CalcomDouble) -> None:
    booking = await cal.book(request(at(24, 17)))
    double.cancel_in_ui(booking.id)
    assert (await cal.cancel(booking.id)).status == "cancelled"


async def test_reschedule_into_a_taken_time(cal: CalcomCalendar, double: CalcomDouble) -> None:
    booking = await cal.book(request(at(24, 17)))
    double.create_in_ui(EVENT_TYPES["haircut"], at(25, 12), {"name": "Other", "email": "o@example.com"})
    with pytest.raises(SlotTaken):
        await cal.reschedule(booking.id, at(25, 12))
    assert (await cal.by_id(booking.id)).start == at(24, 17)  # type: ignore[union-attr]


async def test_rate_limit_is_paced_and_429_waits_for_the_reset(pg_engine: AsyncEngine) -> None:
    async with demo_double(now=lambda: NOW, limit=3, window_s=1.0) as double:
        first, second = calendar(pg_engine, double.url, cache=0), calendar(pg_engine, double.url, cache=0)
        try:
            started = time.monotonic()
            for _ in range(3):  # uses the window up: the last answer says "Remaining: 0"
                await first.free_slots("haircut", NOW.date(), NOW.date(), NOW)
            # Another process does not know: it gets a 429, waits for the announced reset and repeats.
            await second.free_slots("haircut", NOW.date(), NOW.date(), NOW)
            assert double.rate_limited == 1 and time.monotonic() - started >= 0.5
            await first.free_slots("haircut", NOW.date(), NOW.date(), NOW)  # paced: it knew, so no 429
            assert double.rate_limited == 1
            assert len([c for c in double.calls if c.status == 200]) == 5
        finally:
            await first.aclose()
            await second.aclose()


def response(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status, json=body, headers=headers, request=httpx.Request("POST", "http://cal.test/v2/bookings")
    )


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, {"status": "error", "error": {"code": "BadRequestException", "message": NOT_AVAILABLE}}, SlotTaken),
        (409, {"status": "error", "error": {"code": "booking_conflict_error", "message": "conflict"}}, SlotTaken),
        (404, {"statusCode": 404, "message": "Booking with uid=x was not found in the database"}, BookingNotFound),
        (400, {"statusCode": 400, "message": ["property foo should not exist"]}, BookingError),
        (500, {"statusCode": 500, "message": "Internal server error"}, BackendUnavailable),
        (401, {"status": "error", "error": {"code": "UnauthorizedException", "message": "Invalid Access Token."}},
         BackendUnavailable),
    ],
)
def test_error_mapping_of_both_shapes(status: int, body: object, kind: type[BookingError]) -> None:
    error = calcom_error(response(status, body))
    assert type(error) is kind
    assert error.args[0].endswith(("available", "conflict", "database", "should not exist", "error", "Token."))


def test_429_carries_the_reset() -> None:
    error = calcom_error(response(429, {"statusCode": 429, "message": "ThrottlerException: Too Many Requests"},
                                  {"X-RateLimit-Reset-Default": "12.5"}))  # fmt: skip
    assert isinstance(error, RateLimited) and error.retry_after == 12.5


async def test_a_client_without_the_version_header_would_break_loudly(double: CalcomDouble) -> None:
    async with httpx.AsyncClient(base_url=double.url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        old = await http.get("/v2/slots", params={"eventTypeId": "1001", "start": "2026-11-24", "end": "2026-11-24"})
        unauthorized = await http.get("/v2/bookings", headers={"Authorization": "Bearer nope"})
    assert "slots" in old.json()["data"]  # the 2024-04-15 shape, which our parser refuses
    assert unauthorized.status_code == 401
    double.requests.clear()  # deliberately off-contract


def test_now_is_a_monday() -> None:
    assert NOW.weekday() == 0 and NOW + timedelta(days=1) == datetime(2026, 11, 24, 9, tzinfo=UTC)


async def test_calcom_down_tells_the_customer_and_keeps_the_choice(
    double: CalcomDouble, services_env: dict[str, str], tmp_path: Path
) -> None:
    from calcom_setup import calcom_env, write_config

    from bot.config import load_config
    from bot.pipeline import Pipeline
    from bot.runtime import Runtime
    from channels.base import InboundMessage

    config = load_config(write_config(tmp_path / "c.yaml", double.url), env=calcom_env(services_env))
    runtime = await Runtime.start(config)
    tenant = runtime.add_tenant(f"down-{uuid4().hex[:8]}", runtime.tenant("demo").config)
    pipeline = Pipeline(runtime)

    async def say(n: int, text: str) -> list[str]:
        msg = InboundMessage(tenant=tenant.id, channel="telegram", user_id="7", event_id=f"e{n}", text=text)
        return [r.key for r in (await pipeline.handle(msg, NOW)).replies]

    try:
        await say(1, "haircut tomorrow at 5pm, I'm John")
        await say(2, "+447700900123")
        double.fail_next(100, status=503)
        assert await say(3, "yes") == ["book_failed"]
        session = await runtime.sessions.load(tenant.id, "telegram:7")
        assert session is not None and session.slots["time"] == "17:00" and session.slots["name"] == "John"
        double.reset()
        assert await say(4, "yes") == ["booked"]
        assert [b.start for b in double.accepted()] == [at(24, 17)]
    finally:
        await runtime.drop_tenant(tenant.id)
        await runtime.aclose()
