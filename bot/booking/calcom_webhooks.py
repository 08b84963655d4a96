"""cal.com webhooks: ``POST /webhooks/calcom/{tenant}`` -> the ingest path -> :func:`handle` in the worker.

The route only verifies and parses (:func:`verify`, :func:`parse`): the event becomes an
:class:`~channels.base.InboundMessage` of the tenant's ``calcom:bookings`` conversation, whose event id is
``<trigger>:<uid>``. So the ingest script's dedupe makes a repeated webhook a no-op, the tenant's cal.com
events are handled in order, and the work happens in a drain like every chat message (cal.com does not
retry: a drain's own retries are what keeps an event from being lost).

What each trigger does (all of them idempotent: the record is checked before it is changed):

- ``BOOKING_CREATED`` made outside the bot: linked to the customer whose phone or email it carries (our
  ``customers`` table), recorded, reminders scheduled. Unknown attendees and our own bookings: nothing.
- ``BOOKING_RESCHEDULED`` (``rescheduleUid`` -> ``uid``): our record follows, reminders replaced, the
  customer told in their channel and language. Our own reschedule is already recorded: nothing.
- ``BOOKING_CANCELLED``: our record cancelled, reminders dropped, the customer told.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import or_, select

from bot.booking.base import Booking
from bot.booking.calcom import CalcomCalendar
from bot.reminders import Reminding, deliver
from bot.tables import CUSTOMERS
from channels.base import InboundMessage, OutboundMessage, header
from channels.exceptions import BadPayload, BadSignature

if TYPE_CHECKING:
    from bot.runtime import Runtime, Tenant
    from bot.sender import Sender

log = logging.getLogger(__name__)

CHANNEL = "calcom"
USER = "bookings"  # one conversation per tenant: its cal.com events, in order
SIGNATURE_HEADER = "X-Cal-Signature-256"
HANDLED = ("BOOKING_CREATED", "BOOKING_RESCHEDULED", "BOOKING_CANCELLED")


class _Attendee(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = ""
    email: str | None = None
    phoneNumber: str | None = None


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    uid: str
    startTime: datetime
    eventTypeId: int | None = None
    rescheduleUid: str | None = None
    attendees: list[_Attendee] = []


class Event(BaseModel):
    model_config = ConfigDict(extra="ignore")

    triggerEvent: str
    payload: _Payload


def verify(secret: str, headers: Mapping[str, str], body: bytes) -> None:
    """cal.com's ``X-Cal-Signature-256``: hex HMAC-SHA256 of the raw body, no prefix; compared in constant time."""
    given = header(headers, SIGNATURE_HEADER) or ""
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not secret or not hmac.compare_digest(given.encode(), expected.encode()):
        raise BadSignature(f"{SIGNATURE_HEADER} missing or wrong")


def parse(tenant: str, body: bytes) -> InboundMessage | None:
    """The event as a message of the tenant's cal.com conversation; None for triggers we do not handle."""
    try:
        raw = json.loads(body)
        trigger = raw.get("triggerEvent") if isinstance(raw, dict) else None
        if trigger not in HANDLED:
            if not isinstance(trigger, str):
                raise BadPayload("a cal.com webhook needs triggerEvent and payload")
            return None
        event = Event.model_validate(raw)
    except (ValueError, ValidationError) as exc:
        raise BadPayload(f"not a cal.com webhook: {str(exc)[:200]}") from None
    return InboundMessage(
        tenant=tenant,
        channel=CHANNEL,
        user_id=USER,
        event_id=f"{event.triggerEvent}:{event.payload.uid}",
        text=event.model_dump_json(),  # only what handle() reads: a message's text is cut at MAX_TEXT
    )


async def handle(runtime: Runtime, sender: Sender, msg: InboundMessage) -> None:
    """Carry out one cal.com event (in a drain; see the module docstring)."""
    tenant = runtime.tenant(msg.tenant)
    calendar = _calcom(tenant)
    event = Event.model_validate_json(msg.text)
    payload = event.payload
    start = payload.startTime.astimezone(UTC)
    if event.triggerEvent == "BOOKING_CREATED":
        await _created(runtime, tenant, calendar, payload, start)
        return
    if event.triggerEvent == "BOOKING_CANCELLED":
        booking = await calendar.by_id(payload.uid)
        if booking is None or not await calendar.set_status(payload.uid, "cancelled"):
            return
        await runtime.reminders.drop(tenant.id, payload.uid)
        await _tell(tenant, sender, booking, "cancelled_by_business", msg.event_id)
        return
    old = payload.rescheduleUid or payload.uid
    booking = await calendar.by_id(old)
    if booking is None or (old == payload.uid and booking.start == start):
        return  # not ours, or our own reschedule (already recorded under the new uid)
    await calendar.move(old, payload.uid, start)
    moved = booking.model_copy(update={"id": payload.uid, "start": start.astimezone(calendar.tz)})
    await runtime.reminders.drop(tenant.id, old)
    await _schedule(runtime, tenant, moved)
    await _tell(tenant, sender, moved, "moved_by_business", msg.event_id)


def _calcom(tenant: Tenant) -> CalcomCalendar:
    calendar: Any = tenant.calendar
    inner = calendar.inner if isinstance(calendar, Reminding) else calendar
    if not isinstance(inner, CalcomCalendar):
        raise BadPayload(f"tenant {tenant.id!r} does not book through cal.com")
    return inner


async def _created(runtime: Runtime, tenant: Tenant, calendar: CalcomCalendar, payload: Any, start: datetime) -> None:
    if await calendar.by_id(payload.uid) is not None:
        return  # made by the bot
    service = calendar.service_of(payload.eventTypeId) if payload.eventTypeId is not None else None
    customer = await _known_customer(runtime, tenant.id, payload.attendees)
    if service is None or customer is None:
        log.info("%s: cal.com booking %s is not for a known customer; not linked", tenant.id, payload.uid)
        return
    conversation, name, phone, email = customer
    booking = Booking(
        id=payload.uid, tenant=tenant.id, key=f"calcom:{payload.uid}", customer=conversation, service=service,
        start=start.astimezone(calendar.tz), minutes=calendar.services[service], name=name, phone=phone, email=email,
    )  # fmt: skip
    if await calendar.adopt(booking):
        await _schedule(runtime, tenant, booking)


async def _known_customer(
    runtime: Runtime, tenant: str, attendees: list[_Attendee]
) -> tuple[str, str, str, str | None] | None:
    """(conversation, name, phone, email) of the customer with an attendee's phone or email."""
    phones = [a.phoneNumber for a in attendees if a.phoneNumber]
    emails = [a.email for a in attendees if a.email]
    if not phones and not emails:
        return None
    query = (
        select(CUSTOMERS)
        .where(CUSTOMERS.c.tenant == tenant, or_(CUSTOMERS.c.phone.in_(phones), CUSTOMERS.c.email.in_(emails)))
        .order_by(CUSTOMERS.c.created_at.desc())
    )
    await runtime.log.flush()
    async with runtime.db.connect() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        return None
    return row.id, row.name or attendees[0].name, row.phone or (phones or [""])[0], row.email


async def _schedule(runtime: Runtime, tenant: Tenant, booking: Booking) -> None:
    offsets = tenant.config.reminders.offsets()
    if offsets:
        await runtime.reminders.schedule(booking, offsets, datetime.now(UTC))


async def _tell(tenant: Tenant, sender: Sender, booking: Booking, key: str, event_id: str) -> None:
    channel, _, user = booking.customer.partition(":")
    text = tenant.engine.text(key, **tenant.engine.booking_facts(booking.view()))
    message = OutboundMessage(tenant=tenant.id, channel=channel, user_id=user, text=text, event_id=f"calcom:{event_id}")
    await deliver(sender, message)
