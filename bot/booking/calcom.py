"""The cal.com backend: free times, bookings, cancellations and reschedules through cal.com API v2.

One :class:`CalcomCalendar` per tenant, with one :class:`CalcomClient` (one ``httpx.AsyncClient``, reused).

What cal.com decides and what we keep
    cal.com owns the calendar: free times come from ``GET /v2/slots`` and cal.com refuses a taken time. We keep
    our own record of every booking made through the bot (or linked from a webhook) in the ``bookings`` table,
    keyed by cal.com's uid, with the idempotency key, the conversation, start and status; the customer's
    bookings, replay's ``bookings:``, webhooks and reminders read that record, so they cost no API call.
    :func:`record_booking` is the one place a cal.com booking enters that table (it takes the caller's
    connection, so another write - the CRM outbox - can share its transaction).

Never a duplicate booking
    A create whose answer was lost (timeout, 5xx) may have been made. Before any retry, it is looked for by
    its metadata ``key`` among the attendee's bookings of that event type around that start; only if none is
    found is it sent again. A create refused as taken is looked for the same way (an earlier create of ours
    whose answer was lost may hold the time). A redelivered message finds the booking in our record first.

Rate limit and failures
    cal.com allows 120 requests a minute per key. When a response says none are left, calls wait for the
    ``X-RateLimit-Reset-Default`` time before going out; a 429 waits for the reset and is sent again (it was
    not processed). 5xx and timeouts are retried with exponential backoff and full jitter; after the last
    attempt :class:`BackendUnavailable` reaches the dialog, which tells the customer and keeps their choice.

Free times
    One slots call covers a week from the first day asked (clipped to the horizon), in UTC instants that cover
    the customer's local days; answers are kept ``cache_seconds`` and concurrent askers share one call. A
    booking made here removes its time from the kept answers at once; a refused time drops them.

Decisions
    - ``is_open`` reads the tenant's configured ``hours`` (cal.com has no cheap "is this day worked" call).
    - ``reschedule`` keeps our row and gives it the new uid (cal.com cancels the old booking).
    - ``block`` is not possible through the API (block time in cal.com itself): :class:`BookingError`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import ColumnElement, insert, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.booking.base import Booking, BookingKind, BookingWritten, BookRequest, Clock
from bot.booking.records import BookingRecords
from bot.exceptions import BackendUnavailable, BookingError, BookingNotFound, RateLimited, SlotTaken
from bot.retry import Backoff
from bot.settings import WEEKDAYS, CalcomConfig
from bot.tables import BOOKINGS

log = logging.getLogger(__name__)

SLOTS_VERSION = "2024-09-04"
BOOKINGS_VERSION = "2024-08-13"
WINDOW_DAYS = 7  # one slots call covers this many days from the first one asked
_TAKEN = ("already has booking", "not available", "booking_conflict")
_NOT_EMAIL = re.compile(r"[^A-Za-z0-9._-]+")
CANCEL_REASON = "Cancelled by the customer in the chat"
RESCHEDULE_REASON = "Moved by the customer in the chat"

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # per call, for 5xx and timeouts
    base_delay: float = 0.5
    max_delay: float = 8.0
    timeout: float = 10.0
    max_wait: float = 70.0  # the longest a call waits for rate-limit resets in all


def calcom_error(response: httpx.Response) -> BookingError:
    """The one mapping of cal.com's HTTP errors, in either shape, to :mod:`bot.exceptions`.

    ``{"status": "error", "error": {"code", "message", "details"}}`` or bare ``{"statusCode", "message"}``.
    """
    code, message = _error_text(response)
    status = response.status_code
    what = f"cal.com {response.request.method} {response.request.url.path}: {status} {code}: {message}"
    if status == 429:
        return RateLimited(what, _reset_seconds(response.headers) or 60.0)
    if status == 409 or (status == 400 and any(t in f"{code} {message}".lower() for t in _TAKEN)):
        return SlotTaken(what)
    if status == 404:
        return BookingNotFound(what)
    if status >= 500:
        return BackendUnavailable(what)
    if status in (401, 403):  # a refused key is nothing the customer can fix: "not yet", and no retry
        return BackendUnavailable(what, transient=False)
    return BookingError(what)


def _error_text(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:200]
    if not isinstance(body, dict):
        return "", str(body)[:200]
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("code", "")), str(error.get("message", ""))
    message = body.get("message", "")
    return str(body.get("statusCode", "")), " ".join(message) if isinstance(message, list) else str(message)


def _reset_seconds(headers: httpx.Headers) -> float | None:
    try:
        return max(0.0, float(headers["X-RateLimit-Reset-Default"]))
    except (KeyError, ValueError):
        return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


class CalcomClient:
    """HTTP to one cal.com account: auth, version headers, pacing under the rate limit, retries."""

    def __init__(self, cfg: CalcomConfig, policy: RetryPolicy | None = None, *, sleep: Sleep = asyncio.sleep) -> None:
        self.cfg = cfg
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._http: httpx.AsyncClient | None = None
        self._resume_at = 0.0  # monotonic: no request before this (the window's allowance is used up)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self.cfg.api_base.rstrip("/"),
                headers={"Authorization": f"Bearer {self.cfg.api_key}"},
                timeout=self.policy.timeout,
                limits=httpx.Limits(max_connections=20),
            )
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def call(
        self,
        method: str,
        path: str,
        version: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        retry: bool = True,
    ) -> Any:
        """The ``data`` of a successful answer. 429s wait and repeat; 5xx and timeouts are retried only when
        ``retry`` (a create is not: the caller reconciles first). Raises what :func:`calcom_error` maps."""
        failures, waited = 0, 0.0
        while True:
            waited += await self._pace()
            try:
                response = await self._client().request(
                    method, path, params=params, json=body, headers={"cal-api-version": version}
                )
            except httpx.TransportError as exc:  # timeouts included
                error: BookingError = BackendUnavailable(f"cal.com {method} {path}: {exc!r}")
            else:
                self._note_limit(response)
                if response.is_success:
                    return _data(response)
                error = calcom_error(response)
            if isinstance(error, RateLimited) and waited + error.retry_after <= self.policy.max_wait:
                log.warning("%s; waiting %.1f s for the reset", error, error.retry_after)
                waited += error.retry_after
                self._resume_at = max(self._resume_at, time.monotonic() + error.retry_after)
                continue
            failures += 1
            transient = isinstance(error, BackendUnavailable) and error.transient
            if not (transient and retry) or failures >= self.policy.attempts:
                raise error
            await self.pause(failures)

    async def pause(self, failures: int) -> None:
        """Back off (full jitter) before the retry that follows ``failures`` failures."""
        await self._sleep(Backoff(self.policy.base_delay, self.policy.max_delay).delay(failures - 1))

    async def _pace(self) -> float:
        delay = self._resume_at - time.monotonic()
        if delay <= 0:
            return 0.0
        await self._sleep(delay)
        return delay

    def _note_limit(self, response: httpx.Response) -> None:
        """With nothing left in this window, hold further calls until it resets (saves the 429s)."""
        remaining = response.headers.get("X-RateLimit-Remaining-Default")
        reset = _reset_seconds(response.headers)
        if remaining is not None and remaining.isdigit() and int(remaining) == 0 and reset is not None:
            self._resume_at = max(self._resume_at, time.monotonic() + reset)


def _data(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        raise BackendUnavailable(f"cal.com answered {response.status_code} with no JSON") from None
    if not isinstance(body, dict) or body.get("status") != "success" or "data" not in body:
        raise BackendUnavailable(f"cal.com answered an unexpected body: {str(body)[:200]}")
    return body["data"]


async def record_booking(conn: AsyncConnection, booking: Booking) -> None:
    """Insert our record of a cal.com booking (the one place; the CRM outbox can join this transaction)."""
    now = datetime.now(UTC)
    await conn.execute(
        insert(BOOKINGS).values(
            id=booking.id,
            tenant=booking.tenant,
            key=booking.key,
            customer=booking.customer,
            service=booking.service,
            start_at=booking.start,
            minutes=booking.minutes,
            name=booking.name,
            phone=booking.phone,
            email=booking.email,
            status=booking.status,
            created_at=now,
            updated_at=now,
        )
    )


@dataclass
class _Window:
    expires: float
    starts: list[datetime]  # UTC


class CalcomCalendar(BookingRecords):
    """One tenant's bookings in cal.com (see the module docstring)."""

    def __init__(
        self,
        engine: AsyncEngine,
        tenant: str,
        tz: ZoneInfo,
        hours: dict[str, list[str]],
        services: dict[str, int],
        cfg: CalcomConfig,
        *,
        locale: str = "en",
        horizon_days: int = 30,
        cache_seconds: float = 2.0,
        clock: Clock | None = None,
        client: CalcomClient | None = None,
        on_write: BookingWritten | None = None,
    ) -> None:
        self.engine = engine
        self.on_write = on_write  # joins every change of our record's transaction (the CRM outbox)
        self.tenant = tenant
        self.tz = tz
        self.services = dict(services)
        self.cfg = cfg
        self.locale = locale
        self.horizon_days = horizon_days
        self.cache_seconds = cache_seconds
        self.clock = clock
        self.client = client or CalcomClient(cfg)
        self._open_days = {WEEKDAYS.index(day) for day, ranges in hours.items() if ranges}
        self._windows: dict[tuple[str, date, date], _Window] = {}
        self._inflight: dict[tuple[str, date, date], asyncio.Future[list[datetime]]] = {}

    async def aclose(self) -> None:
        await self.client.aclose()

    # -- read side -------------------------------------------------------------------------------------------

    async def free_slots(self, service: str, day_from: date, day_to: date, now: datetime) -> list[datetime]:
        self._event_type(service)
        today = now.astimezone(self.tz).date()
        first, last = max(day_from, today), min(day_to, today + timedelta(days=self.horizon_days))
        if first > last:
            return []
        starts = await self._window(service, first, last, today)
        return [s.astimezone(self.tz) for s in starts if s >= now and first <= s.astimezone(self.tz).date() <= last]

    async def is_open(self, day: date) -> bool:
        return day.weekday() in self._open_days

    # -- write side ------------------------------------------------------------------------------------------

    async def book(self, request: BookRequest) -> Booking:
        async with self.engine.connect() as conn:
            found = await self._find(conn, BOOKINGS.c.key == request.key)
        if found is not None and found.status == "active":
            return found
        event_type = self._event_type(request.service)
        body = self._create_body(request, event_type)
        for attempt in range(1, self.client.policy.attempts + 1):
            try:
                data = await self.client.call("POST", "/v2/bookings", BOOKINGS_VERSION, body=body, retry=False)
            except SlotTaken:
                self._windows.clear()
                data = await self._reconcile(request, event_type, body)  # taken by our own lost create?
                if data is None:
                    raise
            except BackendUnavailable as exc:
                if not exc.transient:
                    raise
                data = await self._reconcile(request, event_type, body)
                if data is None:
                    if attempt == self.client.policy.attempts:
                        raise
                    log.warning("%s: create lost (%s), not made; retry %d", self.tenant, exc, attempt)
                    await self.client.pause(attempt)
                    continue
                log.warning("%s: create lost (%s) but made as %s", self.tenant, exc, data.get("uid"))
            return await self._remember(request, data, found)
        raise AssertionError("unreachable")

    async def cancel(self, booking_id: str) -> Booking:
        booking = await self._require(booking_id, active=False)
        if booking.status == "cancelled":
            return booking
        path = f"/v2/bookings/{booking_id}/cancel"
        try:
            await self.client.call("POST", path, BOOKINGS_VERSION, body={"cancellationReason": CANCEL_REASON})
        except BookingError as exc:
            if type(exc) is not BookingError or await self._remote_status(booking_id) != "cancelled":
                raise
        await self.set_status(booking_id, "cancelled")
        self._windows.clear()
        return booking.model_copy(update={"status": "cancelled"})

    async def reschedule(self, booking_id: str, start: datetime) -> Booking:
        booking = await self._require(booking_id, active=True)
        if booking.start == start:
            return booking
        body = {"start": _iso(start), "reschedulingReason": RESCHEDULE_REASON}
        path = f"/v2/bookings/{booking_id}/reschedule"
        try:
            data = await self.client.call("POST", path, BOOKINGS_VERSION, body=body, retry=False)
        except SlotTaken:
            self._windows.clear()
            raise
        except BackendUnavailable:
            moved = await self._moved_to(booking_id)
            if moved is None:  # not made: a retry is safe
                data = await self.client.call("POST", path, BOOKINGS_VERSION, body=body)
            else:
                data = moved
        moved_booking = booking.model_copy(update={"id": str(data["uid"]), "start": _instant(data["start"])})
        await self.move(booking_id, moved_booking.id, moved_booking.start)
        self._windows.clear()
        return moved_booking.model_copy(update={"start": moved_booking.start.astimezone(self.tz)})

    async def block(self, start: datetime, minutes: int) -> None:
        raise BookingError(f"{self.tenant}: cal.com time is blocked in cal.com itself, not through the bot")

    # -- our record (also used by the webhooks) --------------------------------------------------------------

    async def set_status(self, booking_id: str, status: str) -> bool:
        """Mark our record; False when there is no such row or it already had that status."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(BOOKINGS)
                .where(BOOKINGS.c.tenant == self.tenant, BOOKINGS.c.id == booking_id, BOOKINGS.c.status != status)
                .values(status=status, updated_at=datetime.now(UTC))
            )
            if result.rowcount and status == "cancelled":
                await self._written(conn, "cancel", BOOKINGS.c.id == booking_id)
        return bool(result.rowcount)

    async def move(self, old_uid: str, new_uid: str, start: datetime) -> bool:
        """Give our row of ``old_uid`` its new uid and start (a reschedule); False when nothing changed."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(BOOKINGS)
                .where(BOOKINGS.c.tenant == self.tenant, BOOKINGS.c.id == old_uid)
                .values(id=new_uid, start_at=start, status="active", updated_at=datetime.now(UTC))
            )
            if result.rowcount:
                await self._written(conn, "reschedule", BOOKINGS.c.id == new_uid)
        return bool(result.rowcount)

    async def _written(self, conn: AsyncConnection, kind: BookingKind, row: ColumnElement[bool]) -> None:
        """Let the ``on_write`` hook add its rows (CRM outbox) to this change's own transaction."""
        if self.on_write is not None:
            booking = await self._find(conn, row)
            if booking is not None:
                await self.on_write(conn, kind, booking)

    async def adopt(self, booking: Booking) -> bool:
        """Record a booking made in cal.com itself (a webhook); False when it is known already."""
        async with self.engine.begin() as conn:
            if await self._find(conn, BOOKINGS.c.id == booking.id) is not None:
                return False
            await record_booking(conn, booking)
            await self._written(conn, "book", BOOKINGS.c.id == booking.id)
        return True

    def service_of(self, event_type: int) -> str | None:
        return next((s for s, e in self.cfg.event_types.items() if e == event_type), None)

    # -- helpers ---------------------------------------------------------------------------------------------

    def _event_type(self, service: str) -> int:
        try:
            return self.cfg.event_types[service]
        except KeyError:
            raise BookingError(f"{self.tenant}: service {service!r} has no cal.com event type") from None

    def guest_email(self, customer: str) -> str:
        """A stable address for a customer who gave none (cal.com requires one on most event types)."""
        local = _NOT_EMAIL.sub("-", customer).strip("-.") or "customer"
        return f"{local}@{self.cfg.guest_email_domain}"

    def _create_body(self, request: BookRequest, event_type: int) -> dict[str, Any]:
        attendee: dict[str, Any] = {
            "name": request.name,
            "timeZone": str(self.tz),
            "email": request.email or self.guest_email(request.customer),
            "language": self.locale,
        }
        if request.phone:
            attendee["phoneNumber"] = request.phone
        return {
            "start": _iso(request.start),
            "eventTypeId": event_type,
            "attendee": attendee,
            "metadata": {"tenant": self.tenant, "conversation": request.customer, "key": request.key},
        }

    async def _reconcile(self, request: BookRequest, event_type: int, body: dict[str, Any]) -> dict[str, Any] | None:
        """The booking a lost create made, found by its metadata key, or None when it was not made."""
        minutes = self.services[request.service]
        params = {
            "attendeeEmail": body["attendee"]["email"],
            "eventTypeId": str(event_type),
            "afterStart": _iso(request.start - timedelta(minutes=1)),
            "beforeEnd": _iso(request.start + timedelta(minutes=minutes + 1)),
            "take": "100",
        }
        found = await self.client.call("GET", "/v2/bookings", BOOKINGS_VERSION, params=params)
        for item in found if isinstance(found, list) else []:
            mine = isinstance(item, dict) and (item.get("metadata") or {}).get("key") == request.key
            if mine and item.get("status") != "cancelled":
                return dict(item)
        return None

    async def _moved_to(self, uid: str) -> dict[str, Any] | None:
        """After a lost reschedule: the new booking when cal.com made it."""
        old = await self.client.call("GET", f"/v2/bookings/{uid}", BOOKINGS_VERSION)
        new_uid = old.get("rescheduledToUid") if isinstance(old, dict) else None
        if not new_uid:
            return None
        new: dict[str, Any] = await self.client.call("GET", f"/v2/bookings/{new_uid}", BOOKINGS_VERSION)
        return new

    async def _remote_status(self, uid: str) -> str | None:
        data = await self.client.call("GET", f"/v2/bookings/{uid}", BOOKINGS_VERSION)
        return str(data.get("status")) if isinstance(data, dict) else None

    async def _remember(self, request: BookRequest, data: dict[str, Any], previous: Booking | None) -> Booking:
        booking = Booking(
            id=str(data["uid"]),
            tenant=self.tenant,
            key=request.key,
            customer=request.customer,
            service=request.service,
            start=_instant(str(data["start"])).astimezone(self.tz),
            minutes=self.services[request.service],
            name=request.name,
            phone=request.phone,
            email=request.email,
        )
        async with self.engine.begin() as conn:
            if previous is not None:  # the key's earlier booking was cancelled: this one replaces it
                await conn.execute(
                    update(BOOKINGS)
                    .where(BOOKINGS.c.tenant == self.tenant, BOOKINGS.c.id == previous.id)
                    .values(key=f"{previous.key}#{previous.id}")
                )
            await record_booking(conn, booking)
            await self._written(conn, "book", BOOKINGS.c.id == booking.id)
        self._taken(booking.start, booking.minutes)
        return booking

    async def _require(self, booking_id: str, *, active: bool) -> Booking:
        booking = await self.by_id(booking_id)
        if booking is None or (active and booking.status != "active"):
            raise BookingNotFound(f"{self.tenant}: no {'active ' if active else ''}booking {booking_id!r}")
        return booking

    async def _window(self, service: str, first: date, last: date, today: date) -> list[datetime]:
        now = time.monotonic()
        for (svc, lo, hi), window in list(self._windows.items()):
            if window.expires <= now:
                del self._windows[(svc, lo, hi)]
            elif svc == service and lo <= first and last <= hi:
                return window.starts
        end = min(max(last, first + timedelta(days=WINDOW_DAYS - 1)), today + timedelta(days=self.horizon_days))
        key = (service, first, end)
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[list[datetime]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            starts = await self._fetch(service, first, end)
            if self.cache_seconds > 0:
                self._windows[key] = _Window(time.monotonic() + self.cache_seconds, starts)
            future.set_result(starts)
            return starts
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._inflight[key]

    async def _fetch(self, service: str, first: date, last: date) -> list[datetime]:
        start = datetime.combine(first, datetime.min.time(), self.tz)
        end = datetime.combine(last + timedelta(days=1), datetime.min.time(), self.tz)
        params = {
            "eventTypeId": str(self._event_type(service)),
            "start": _iso(start),
            "end": _iso(end),
            "timeZone": str(self.tz),
        }
        data = await self.client.call("GET", "/v2/slots", SLOTS_VERSION, params=params)
        if not isinstance(data, dict) or "slots" in data:
            raise BackendUnavailable(f"cal.com answered slots in another shape (cal-api-version?): {str(data)[:200]}")
        starts = [_instant(item["start"]) for day in data.values() for item in day]
        return sorted(s for s in starts if start <= s < end)

    def _taken(self, start: datetime, minutes: int) -> None:
        """Our own booking: drop the starts it overlaps from every kept answer."""
        end = start + timedelta(minutes=minutes)
        for (service, _lo, _hi), window in self._windows.items():
            length = timedelta(minutes=self.services.get(service, 0))
            window.starts = [s for s in window.starts if s >= end or s + length <= start]
