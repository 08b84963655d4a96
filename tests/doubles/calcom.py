"""cal.com API v2 double: slots, bookings (create, get, list, cancel, reschedule) and a webhook emitter.

Follows the facts of issue 7 (researched from cal.com's source):

- ``Authorization: Bearer <key>`` on every call (401 otherwise); ``cal-api-version`` exact per endpoint: slots
  ``2024-09-04``, bookings ``2024-08-13``. Like cal.com, a missing or unknown version is not refused: slots
  answer the old 2024-04-15 shape (``data.slots``) and bookings refuse the new body (400), so a client that
  forgets the header breaks loudly in tests.
- ``GET /v2/slots?eventTypeId&start&end&timeZone`` -> ``{"status":"success","data":{"YYYY-MM-DD":[{"start"}]}}``
  grouped by the day in ``timeZone``; a date-only ``start``/``end`` is a whole UTC day.
- ``POST /v2/bookings``: strict body (unknown keys 400), attendee email required, ``metadata`` at most 50 keys
  (key <= 40 chars, string value <= 500 chars); a time that is not free 400 "User either already has booking at
  this time or is not available"; 201 ``{status, data{id, uid, status, start, end, ...}}``.
- Cancel needs ``cancellationReason`` (host keys); reschedule answers 201 with a new uid, the old one cancelled.
- Errors in both shapes: ``{status:"error", error:{code, message, details}}`` and bare ``{statusCode, message}``
  (the throttler's 429 and NestJS's own errors).
- 120 requests per minute per key (``limit``/``window_s``), with ``X-RateLimit-{Limit,Remaining,Reset}-Default``.
- Webhooks: body ``{triggerEvent, createdAt, payload}``, ``X-Cal-Signature-256`` = hex HMAC-SHA256(secret, body).

Availability comes from ``hours`` (weekday 0-6 -> [(open, close) minutes of the day]) in ``timezone``, a slot
every ``step`` minutes, minus accepted bookings and ``busy`` blocks; nothing before ``now()`` (settable, so a
frozen conversation clock and the double agree).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from . import Delivery, Double, cli, serve

SLOTS_VERSION = "2024-09-04"
BOOKINGS_VERSION = "2024-08-13"
SIGNATURE_HEADER = "X-Cal-Signature-256"
NOT_AVAILABLE = "User either already has booking at this time or is not available"
_CREATE_KEYS = {
    "start", "attendee", "bookingFieldsResponses", "eventTypeId", "eventTypeSlug", "username", "teamSlug",
    "organizationSlug", "guests", "meetingUrl", "location", "metadata", "lengthInMinutes", "routing",
    "emailVerificationCode",
}  # fmt: skip
_ATTENDEE_KEYS = {"name", "email", "timeZone", "phoneNumber", "language"}
_CANCEL_KEYS = {"cancellationReason", "cancelSubsequentBookings"}
_RESCHEDULE_KEYS = {"start", "rescheduledBy", "reschedulingReason", "emailVerificationCode"}


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str, *, bare: bool = False) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.bare = status, code, message, bare

    def response(self, headers: Mapping[str, str]) -> web.Response:
        if self.bare:
            body: dict[str, Any] = {"statusCode": self.status, "message": self.message}
        else:
            body = {"status": "error", "error": {"code": self.code, "message": self.message, "details": {}}}
        return web.json_response(body, status=self.status, headers=dict(headers))


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class EventType:
    id: int
    minutes: int


@dataclass
class CalBooking:
    id: int
    uid: str
    event_type: int
    start: datetime  # UTC
    minutes: int
    attendee: dict[str, Any]
    metadata: dict[str, str]
    status: str = "accepted"
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    cancellation_reason: str | None = None
    rescheduled_from: str | None = None
    rescheduled_to: str | None = None

    @property
    def end(self) -> datetime:
        return self.start + timedelta(minutes=self.minutes)

    def output(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uid": self.uid,
            "title": f"Booking {self.uid}",
            "description": "",
            "hosts": [{"id": 1, "name": "Host", "email": "host@example.com", "username": "host", "timeZone": "UTC"}],
            "status": self.status,
            "cancellationReason": self.cancellation_reason,
            "rescheduledFromUid": self.rescheduled_from,
            "rescheduledToUid": self.rescheduled_to,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "duration": self.minutes,
            "eventTypeId": self.event_type,
            "eventType": {"id": self.event_type, "slug": f"event-{self.event_type}"},
            "location": "",
            "absentHost": False,
            "createdAt": _iso(self.created_at),
            "updatedAt": _iso(datetime.now(UTC)),
            "metadata": self.metadata,
            "attendees": [{**self.attendee, "absent": False}],
            "bookingFieldsResponses": {"name": self.attendee["name"], "email": self.attendee["email"]},
        }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _instant(value: str, what: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Refused(400, "BadRequestException", f"{what} must be an ISO 8601 date or date-time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


class CalcomDouble(Double):
    def __init__(
        self,
        api_key: str,
        event_types: Mapping[int, int],
        *,
        timezone: str = "UTC",
        hours: Mapping[int, list[tuple[int, int]]] | None = None,
        step: int = 30,
        limit: int = 120,
        window_s: float = 60.0,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.event_types = {eid: EventType(eid, minutes) for eid, minutes in event_types.items()}
        self.tz = ZoneInfo(timezone)
        self.hours = dict(hours) if hours is not None else {d: [(10 * 60, 20 * 60)] for d in range(6)}
        self.step = step
        self.limit, self.window_s = limit, window_s
        self.now: Callable[[], datetime] = now or (lambda: datetime.now(UTC))
        self.bookings: dict[str, CalBooking] = {}
        self.requests: list[Request] = []  # every request as sent (for the contract checks)
        self.busy: list[tuple[datetime, datetime]] = []
        self.rate_limited = 0  # 429s answered
        self.lose_next = 0  # make the next N creates succeed but answer 500 (a lost response)
        self._ids = itertools.count(1001)
        self._window: dict[str, tuple[float, int]] = {}  # key -> (window start, requests)
        router = self.app.router
        router.add_get("/v2/slots", self._slots)
        router.add_post("/v2/bookings", self._create)
        router.add_get("/v2/bookings", self._list)
        router.add_get("/v2/bookings/{uid}", self._get_booking)
        router.add_post("/v2/bookings/{uid}/cancel", self._cancel)
        router.add_post("/v2/bookings/{uid}/reschedule", self._reschedule)

    def reset(self) -> None:
        super().reset()
        self.bookings.clear()
        self.requests.clear()
        self.busy.clear()
        self._window.clear()
        self.rate_limited = self.lose_next = 0

    # -- what tests look at and do ("in the cal.com UI") ------------------------------------------------------

    def accepted(self) -> list[CalBooking]:
        return sorted((b for b in self.bookings.values() if b.status == "accepted"), key=lambda b: b.start)

    def block(self, start: datetime, minutes: int) -> None:
        self.busy.append((start.astimezone(UTC), start.astimezone(UTC) + timedelta(minutes=minutes)))

    def create_in_ui(
        self, event_type: int, start: datetime, attendee: dict[str, Any], metadata: dict[str, str] | None = None
    ) -> CalBooking:
        """A booking made in cal.com itself (or, with ``metadata``, one whose API answer never arrived)."""
        full = {"timeZone": "UTC", "language": "en", **attendee}
        return self._new(event_type, start.astimezone(UTC), full, dict(metadata or {}))

    def cancel_in_ui(self, uid: str, reason: str = "cancelled by the salon") -> CalBooking:
        booking = self.bookings[uid]
        booking.status, booking.cancellation_reason = "cancelled", reason
        return booking

    def reschedule_in_ui(self, uid: str, start: datetime) -> tuple[CalBooking, CalBooking]:
        old = self.bookings[uid]
        new = self._new(old.event_type, start.astimezone(UTC), old.attendee, dict(old.metadata))
        new.rescheduled_from, old.rescheduled_to, old.status = old.uid, new.uid, "cancelled"
        return old, new

    @staticmethod
    def webhook_body(trigger: str, booking: CalBooking, *, from_uid: str | None = None) -> bytes:
        """The body cal.com posts for ``trigger`` (BOOKING_CREATED / _RESCHEDULED / _CANCELLED)."""
        payload: dict[str, Any] = {
            "type": f"event-{booking.event_type}",
            "title": f"Booking {booking.uid}",
            "startTime": _iso(booking.start),
            "endTime": _iso(booking.end),
            "organizer": {"name": "Host", "email": "host@example.com", "timeZone": "UTC", "language": {"locale": "en"}},
            "attendees": [{"name": booking.attendee["name"], "email": booking.attendee["email"],
                           "timeZone": booking.attendee.get("timeZone", "UTC"),
                           "phoneNumber": booking.attendee.get("phoneNumber"),
                           "language": {"locale": booking.attendee.get("language", "en")}}],
            "uid": booking.uid,
            "bookingId": booking.id,
            "eventTypeId": booking.event_type,
            "status": "CANCELLED" if booking.status == "cancelled" else "ACCEPTED",
            "metadata": booking.metadata,
        }  # fmt: skip
        if from_uid is not None:
            payload["rescheduleUid"] = from_uid
        if booking.cancellation_reason:
            payload["cancellationReason"] = booking.cancellation_reason
        body = {"triggerEvent": trigger, "createdAt": _iso(datetime.now(UTC)), "payload": payload}
        return json.dumps(body).encode()

    async def emit(self, url: str, body: bytes, secret: str) -> Delivery:
        """POST a webhook the way cal.com does: signed, once (cal.com does not retry)."""
        signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return await self._post(url, body, {"Content-Type": "application/json", SIGNATURE_HEADER: signature})

    # -- the API --------------------------------------------------------------------------------------------

    async def _slots(self, request: web.Request) -> web.Response:
        return await self._serve(request, "slots", self._slots_answer)

    async def _create(self, request: web.Request) -> web.Response:
        return await self._serve(request, "bookings", self._create_answer)

    async def _list(self, request: web.Request) -> web.Response:
        return await self._serve(request, "bookings", self._list_answer)

    async def _get_booking(self, request: web.Request) -> web.Response:
        return await self._serve(request, "bookings", self._get_answer)

    async def _cancel(self, request: web.Request) -> web.Response:
        return await self._serve(request, "bookings", self._cancel_answer)

    async def _reschedule(self, request: web.Request) -> web.Response:
        return await self._serve(request, "bookings", self._reschedule_answer)

    Handler = Callable[[web.Request, dict[str, Any], bool], tuple[int, Any]]

    async def _serve(self, request: web.Request, kind: str, handler: Handler) -> web.Response:
        body: dict[str, Any] = {}
        if request.method == "POST":
            try:
                raw = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raw = None
            body = raw if isinstance(raw, dict) else {"__invalid__": True}
        call = self._record(request, f"{request.method} {request.path}", {**request.query, **body})
        self.requests.append(Request(request.method, request.path, dict(request.query), dict(request.headers), body))
        headers: dict[str, str] = {}
        try:
            headers = self._authorize(request)
            failure = self._take_failure()
            if failure is not None and failure.status is not None:
                raise Refused(failure.status, "InternalServerErrorException", "injected failure", bare=True)
            if "__invalid__" in body:
                raise Refused(400, "BadRequestException", "body must be a JSON object")
            wanted = SLOTS_VERSION if kind == "slots" else BOOKINGS_VERSION
            status, data = handler(request, body, request.headers.get("cal-api-version") == wanted)
        except Refused as refused:
            call.status, call.error = refused.status, refused.message
            return refused.response(headers)
        call.status = status
        return web.json_response({"status": "success", "data": data}, status=status, headers=headers)

    def _authorize(self, request: web.Request) -> dict[str, str]:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            raise Refused(401, "UnauthorizedException", "Invalid Access Token.")
        started, count = self._window.get(self.api_key, (time.monotonic(), 0))
        if time.monotonic() - started >= self.window_s:
            started, count = time.monotonic(), 0
        count += 1
        self._window[self.api_key] = (started, count)
        reset = max(0, round(started + self.window_s - time.monotonic(), 3))
        headers = {
            "X-RateLimit-Limit-Default": str(self.limit),
            "X-RateLimit-Remaining-Default": str(max(0, self.limit - count)),
            "X-RateLimit-Reset-Default": str(reset),
        }
        if count > self.limit:
            self.rate_limited += 1
            raise Refused(429, "TooManyRequestsException", "ThrottlerException: Too Many Requests", bare=True)
        return headers

    def _slots_answer(self, request: web.Request, _body: dict[str, Any], current: bool) -> tuple[int, Any]:
        query = request.query
        try:
            event = self.event_types[int(query.get("eventTypeId", ""))]
        except (ValueError, KeyError):
            raise Refused(400, "BadRequestException", "eventTypeId: unknown or missing event type") from None
        if "start" not in query or "end" not in query:
            raise Refused(400, "BadRequestException", "start and end are required")
        start, end = (self._bound(query[k], k == "end") for k in ("start", "end"))
        tz = ZoneInfo(query.get("timeZone", "UTC"))
        days: dict[str, list[dict[str, str]]] = {}
        for moment in self._free(event, max(start, self.now()), end):
            local = moment.astimezone(tz)
            days.setdefault(local.date().isoformat(), []).append({"start": local.isoformat(timespec="milliseconds")})
        if not current:  # the 2024-04-15 shape a client gets without the right version header
            old = {day: [{"time": s["start"]} for s in slots] for day, slots in days.items()}
            return 200, {"slots": old}
        return 200, days

    def _bound(self, value: str, end: bool) -> datetime:
        if len(value) == 10:  # a date alone is a whole UTC day
            day = date.fromisoformat(value)
            return datetime.combine(day + timedelta(days=1 if end else 0), datetime.min.time(), UTC)
        return _instant(value, "end" if end else "start")

    def _free(self, event: EventType, start: datetime, end: datetime) -> list[datetime]:
        free: list[datetime] = []
        day = start.astimezone(self.tz).date() - timedelta(days=1)
        while datetime.combine(day, datetime.min.time(), self.tz) < end:
            for opens, closes in self.hours.get(day.weekday(), []):
                midnight = datetime.combine(day, datetime.min.time(), self.tz)
                for minute in range(opens, closes - event.minutes + 1, self.step):
                    moment = (midnight + timedelta(minutes=minute)).astimezone(UTC)
                    if start <= moment < end and self._available(moment, event.minutes):
                        free.append(moment)
            day += timedelta(days=1)
        return free

    def _available(self, start: datetime, minutes: int, ignore: str | None = None) -> bool:
        end = start + timedelta(minutes=minutes)
        taken = [(b.start, b.end) for b in self.bookings.values() if b.status == "accepted" and b.uid != ignore]
        return all(end <= lo or hi <= start for lo, hi in [*taken, *self.busy])

    def _bookable(self, event: EventType, start: datetime, ignore: str | None = None) -> bool:
        if start < self.now():
            return False
        local = start.astimezone(self.tz)
        minute = local.hour * 60 + local.minute
        on_grid = local.second == 0 and local.microsecond == 0 and any(
            opens <= minute <= closes - event.minutes and (minute - opens) % self.step == 0
            for opens, closes in self.hours.get(local.weekday(), [])
        )
        return on_grid and self._available(start, event.minutes, ignore)

    def _create_answer(self, _request: web.Request, body: dict[str, Any], current: bool) -> tuple[int, Any]:
        if not current:
            raise Refused(400, "BadRequestException", "responses: required (2024-04-15 body)", bare=True)
        _strict(body, _CREATE_KEYS, "")
        attendee = body.get("attendee")
        if not isinstance(attendee, dict):
            raise Refused(400, "BadRequestException", "attendee must be an object")
        _strict(attendee, _ATTENDEE_KEYS, "attendee.")
        for key in ("name", "timeZone", "email"):
            if not isinstance(attendee.get(key), str) or not attendee[key]:
                raise Refused(400, "BadRequestException", f"attendee.{key} is required")
        _metadata(body.get("metadata", {}))
        event = self.event_types.get(body.get("eventTypeId"))  # type: ignore[arg-type]
        if event is None or "start" not in body:
            raise Refused(400, "BadRequestException", "start and a known eventTypeId are required")
        start = _instant(str(body["start"]), "start")
        if not self._bookable(event, start):
            raise Refused(400, "BadRequestException", NOT_AVAILABLE)
        booking = self._new(event.id, start, dict(attendee), dict(body.get("metadata", {})))
        if self.lose_next > 0:
            self.lose_next -= 1
            raise Refused(500, "InternalServerErrorException", "Internal server error", bare=True)
        return 201, booking.output()

    def _new(self, event_type: int, start: datetime, attendee: dict[str, Any], metadata: dict[str, str]) -> CalBooking:
        booking = CalBooking(
            next(self._ids), secrets.token_urlsafe(16), event_type, start, self.event_types[event_type].minutes,
            attendee, metadata,
        )  # fmt: skip
        self.bookings[booking.uid] = booking
        return booking

    def _list_answer(self, request: web.Request, _body: dict[str, Any], current: bool) -> tuple[int, Any]:
        query = request.query
        found = sorted(self.bookings.values(), key=lambda b: (b.start, b.id))
        statuses = set(query.get("status", "").split(",")) - {""}
        if statuses:
            now = self.now()
            found = [b for b in found if any(_status_matches(b, s, now) for s in statuses)]
        if "attendeeEmail" in query:
            found = [b for b in found if b.attendee["email"] == query["attendeeEmail"]]
        if "eventTypeId" in query:
            found = [b for b in found if str(b.event_type) == query["eventTypeId"]]
        if "afterStart" in query:
            found = [b for b in found if b.start >= _instant(query["afterStart"], "afterStart")]
        if "beforeEnd" in query:
            found = [b for b in found if b.end <= _instant(query["beforeEnd"], "beforeEnd")]
        take, skip = int(query.get("take", "100")), int(query.get("skip", "0"))
        return 200, [b.output() for b in found[skip : skip + take]]

    def _get_answer(self, request: web.Request, _body: dict[str, Any], current: bool) -> tuple[int, Any]:
        return 200, self._booking(request).output()

    def _booking(self, request: web.Request) -> CalBooking:
        booking = self.bookings.get(request.match_info["uid"])
        if booking is None:
            uid = request.match_info["uid"]
            raise Refused(404, "NotFoundException", f"Booking with uid={uid} was not found in the database")
        return booking

    def _cancel_answer(self, request: web.Request, body: dict[str, Any], current: bool) -> tuple[int, Any]:
        _strict(body, _CANCEL_KEYS, "")
        booking = self._booking(request)
        if not isinstance(body.get("cancellationReason"), str) or not body["cancellationReason"]:
            raise Refused(400, "BadRequestException", "Cancellation reason is required when you are the host")
        if booking.status == "cancelled":
            raise Refused(400, "BadRequestException", "This booking has already been cancelled.")
        booking.status, booking.cancellation_reason = "cancelled", body["cancellationReason"]
        return 200, booking.output()

    def _reschedule_answer(self, request: web.Request, body: dict[str, Any], current: bool) -> tuple[int, Any]:
        _strict(body, _RESCHEDULE_KEYS, "")
        old = self._booking(request)
        if old.status != "accepted":
            raise Refused(400, "BadRequestException", "Can't reschedule a cancelled booking")
        if "start" not in body:
            raise Refused(400, "BadRequestException", "start is required")
        start = _instant(str(body["start"]), "start")
        if not self._bookable(self.event_types[old.event_type], start, ignore=old.uid):
            raise Refused(400, "BadRequestException", NOT_AVAILABLE)
        _old, new = self.reschedule_in_ui(old.uid, start)
        return 201, new.output()


def _strict(body: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Refused(400, "BadRequestException", f"property {where}{unknown[0]} should not exist")


def _metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict) or len(metadata) > 50:
        raise Refused(400, "BadRequestException", "metadata must be an object of at most 50 keys")
    for key, value in metadata.items():
        if len(key) > 40 or not isinstance(value, str | int | float | bool) or len(str(value)) > 500:
            raise Refused(400, "BadRequestException", f"metadata.{key}: keys <= 40 chars, values <= 500 chars")


def _status_matches(booking: CalBooking, status: str, now: datetime) -> bool:
    if status == "cancelled":
        return booking.status == "cancelled"
    if status == "upcoming":
        return booking.status == "accepted" and booking.end >= now
    if status == "past":
        return booking.status == "accepted" and booking.end < now
    return False


if __name__ == "__main__":
    parser = cli("cal.com API v2 double")
    parser.add_argument("--api-key", default="cal_test")
    parser.add_argument("--event-types", default="1001:60,1002:45,1003:120", help="id:minutes,...")
    parser.add_argument("--timezone", default="Europe/London")
    args = parser.parse_args()
    pairs = (item.split(":") for item in args.event_types.split(","))
    serve(CalcomDouble(args.api_key, {int(i): int(m) for i, m in pairs}, timezone=args.timezone), args.port)
