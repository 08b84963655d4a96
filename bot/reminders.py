"""Reminders before a booking, for every booking backend, sent in the customer's channel with working buttons.

A reminder is keyed by (booking id, start, offset): ``<id>|<start UTC ISO>|<minutes before>``.

Scheduling
    :class:`Reminding` wraps a tenant's booking backend: a booking made, moved or cancelled schedules, replaces
    or drops its reminders (a reminder already due when the booking is made is skipped). Every scheduled
    reminder is in the tenant's sorted set ``keys.reminders`` (score: when it is due), which
    ``bookingbot reminders`` lists. With ``bookingbot worker`` (arq) each reminder is also an arq job deferred
    to its time, whose job id is the reminder's key: scheduling again (a redelivered message, a retried drain)
    finds the job and adds nothing. In embedded mode there is no arq: the server's :meth:`Reminders.loop`
    claims due reminders from the sorted set (a lease, so a crashed sender's reminder comes back). Both end in
    :func:`fire`.

Firing
    :func:`fire` reads the booking again: gone, cancelled or moved to another start makes the reminder stale
    (nothing is sent; a reschedule's new reminders carry the new key). Otherwise it sends the tenant's
    ``reminder`` text with confirm / reschedule / cancel buttons through the :class:`~bot.sender.Sender`, whose
    per-event record (event id ``reminder:<key>``) makes a retried job never send twice. On WhatsApp, more than
    24 hours after the customer last wrote, the configured template message goes instead (free-form messages
    are refused outside that window).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from arq.constants import expires_extra_ms
from arq.jobs import serialize_job
from redis.asyncio import Redis
from sqlalchemy import func, select

from bot import keys
from bot.booking.base import Booking, BookingBackend, BookRequest, Clock
from bot.exceptions import ChannelNotConfigured
from bot.ingest import dumps_job
from bot.tables import MESSAGES
from channels.base import OutboundMessage, OutButton, TemplateRef
from dialogs.ports import BookingView

if TYPE_CHECKING:
    from bot.runtime import Runtime
    from bot.sender import Sender
    from bot.settings import Settings

log = logging.getLogger(__name__)

REMIND_JOB = "remind"  # the arq function name (bot.worker registers it)
CLAIM_LEASE_S = 300  # a claimed reminder comes back after this if its sender died
WHATSAPP_WINDOW = timedelta(hours=24)

# KEYS: 1 arq job key, 2 arq queue, 3 reminders set; ARGV: 1 job body, 2 ttl ms, 3 due ms, 4 job id, 5 member.
# An existing job key means the reminder is scheduled already: nothing is added twice.
_ENQUEUE = """
redis.call('ZADD', KEYS[3], tonumber(ARGV[3]) / 1000, ARGV[5])
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return 1
"""
# KEYS: 1 reminders set; ARGV: 1 now s, 2 lease until s, 3 limit. Due members, pushed back by the lease.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
return due
"""


@dataclass(frozen=True)
class Reminder:
    tenant: str
    booking_id: str
    start: datetime  # UTC
    offset: int  # minutes before the start

    @property
    def key(self) -> str:
        return f"{self.booking_id}|{self.start.astimezone(UTC).isoformat()}|{self.offset}"

    @property
    def due(self) -> datetime:
        return self.start - timedelta(minutes=self.offset)

    @property
    def job_id(self) -> str:
        return f"bb-remind:{self.tenant}:{self.key}"

    @classmethod
    def parse(cls, tenant: str, key: str) -> Reminder:
        booking_id, start, offset = key.rsplit("|", 2)
        return cls(tenant, booking_id, datetime.fromisoformat(start), int(offset))


class Reminders:
    """Schedules, lists and claims reminders (see the module docstring); one per process."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.mode: Literal["local", "arq"] = "local"
        self.queue_name = keys.JOB_QUEUE
        self._enqueue = redis.register_script(_ENQUEUE)
        self._claim = redis.register_script(_CLAIM)

    def use_arq(self, queue_name: str) -> None:
        """Reminders become arq deferred jobs (a ``bookingbot worker`` process runs them)."""
        self.mode, self.queue_name = "arq", queue_name

    async def schedule(self, booking: Booking, offsets: list[int], now: datetime) -> list[Reminder]:
        reminders = [Reminder(booking.tenant, booking.id, booking.start.astimezone(UTC), o) for o in offsets]
        reminders = [r for r in reminders if r.due > now]  # already due when booked: skipped
        for reminder in reminders:
            due_ms = int(reminder.due.timestamp() * 1000)
            if self.mode == "arq":
                job = serialize_job(REMIND_JOB, (reminder.tenant, reminder.key), {}, None, due_ms, serializer=dumps_job)
                ttl = max(0, due_ms - int(time.time() * 1000)) + expires_extra_ms
                await self._enqueue(
                    keys=[keys.job(reminder.job_id), self.queue_name, keys.reminders(reminder.tenant)],
                    args=[job, ttl, due_ms, reminder.job_id, reminder.key],
                )
            else:
                await self.redis.zadd(keys.reminders(reminder.tenant), {reminder.key: due_ms / 1000})
        return reminders

    async def drop(self, tenant: str, booking_id: str | None = None) -> int:
        """Forget a booking's reminders, or all of the tenant's (``booking_id`` None: the tenant is dropped), with
        their arq jobs."""
        match = None if booking_id is None else f"{booking_id}|*"
        found = [m async for m, _ in self.redis.zscan_iter(keys.reminders(tenant), match=match)]
        if not found:
            return 0
        jobs = [Reminder.parse(tenant, m).job_id for m in found]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.reminders(tenant), *found)
            pipe.zrem(self.queue_name, *jobs)
            pipe.delete(*(keys.job(j) for j in jobs))
            await pipe.execute()
        return len(found)

    async def done(self, reminder: Reminder) -> None:
        await self.redis.zrem(keys.reminders(reminder.tenant), reminder.key)

    async def scheduled(self, tenant: str) -> list[Reminder]:
        members = await self.redis.zrange(keys.reminders(tenant), 0, -1)
        return sorted((Reminder.parse(tenant, m) for m in members), key=lambda r: (r.due, r.key))

    async def claim_due(self, tenant: str, now: datetime, limit: int = 100) -> list[Reminder]:
        at = now.timestamp()
        members = await self._claim(keys=[keys.reminders(tenant)], args=[at, at + CLAIM_LEASE_S, limit])
        return [Reminder.parse(tenant, m) for m in members]

    async def loop(self, runtime: Runtime, sender: Sender, *, every_s: float = 1.0, clock: Clock | None = None) -> None:
        """Embedded mode: fire due reminders of every tenant, forever (cancel the task to stop)."""
        now = clock or (lambda: datetime.now(UTC))
        while True:
            for tenant in list(runtime.tenants):
                try:
                    for reminder in await self.claim_due(tenant, now()):
                        await fire(runtime, sender, reminder, now())
                except Exception:  # one tenant's failure must not stop the others' reminders
                    log.exception("%s: reminders failed; the claimed ones come back after the lease", tenant)
            await asyncio.sleep(every_s)


async def fire(runtime: Runtime, sender: Sender, reminder: Reminder, now: datetime) -> bool:
    """Send one reminder unless it is stale; True when it was sent (or had been)."""
    tenant = runtime.tenant(reminder.tenant)
    booking = await tenant.calendar.by_id(reminder.booking_id)
    reminders = runtime.reminders
    if booking is None or booking.status != "active" or booking.start != reminder.start:
        await reminders.done(reminder)
        return False
    message = await _message(runtime, booking, reminder, now)
    sent = await deliver(sender, message)
    await reminders.done(reminder)
    return sent


async def deliver(sender: Sender, message: OutboundMessage) -> bool:
    """Send a message the customer did not ask for; False when their channel has no account (the terminal)."""
    try:
        await sender.deliver([message])
    except ChannelNotConfigured:
        who = f"{message.channel}:{message.user_id}"
        log.info("%s: nothing sent to %s (no account on that channel)", message.tenant, who)
        return False
    return True


async def _message(runtime: Runtime, booking: Booking, reminder: Reminder, now: datetime) -> OutboundMessage:
    tenant = runtime.tenant(booking.tenant)
    channel, _, user = booking.customer.partition(":")
    facts = tenant.engine.booking_facts(booking.view())
    template = tenant.config.reminders.whatsapp_template
    ref: TemplateRef | None = None
    if channel == "whatsapp" and template is not None and not await _in_window(runtime, booking, now):
        params = (facts["service"], facts["date"], facts["time"])
        ref = TemplateRef(name=template.name, language=template.language, params=params)
    buttons = tenant.engine.reminder_buttons(booking.id)
    return OutboundMessage(
        tenant=booking.tenant,
        channel=channel,  # a conversation id starts with its channel's name (validated here)
        user_id=user,
        text=tenant.engine.text("reminder", **facts),
        buttons=tuple(OutButton(label=b.label, data=b.value) for b in buttons),
        template=ref,
        event_id=f"reminder:{reminder.key}",
    )


async def _in_window(runtime: Runtime, booking: Booking, now: datetime) -> bool:
    """Whether the customer wrote within WhatsApp's 24-hour customer service window."""
    await runtime.log.flush()
    query = select(func.max(MESSAGES.c.at)).where(
        MESSAGES.c.tenant == booking.tenant, MESSAGES.c.conversation == booking.customer, MESSAGES.c.direction == "in"
    )
    async with runtime.db.connect() as conn:
        last = await conn.scalar(query)
    return last is not None and now - last < WHATSAPP_WINDOW


class Reminding:
    """A booking backend whose bookings schedule, replace and drop their reminders (the rest passes through)."""

    def __init__(self, inner: BookingBackend, reminders: Reminders, offsets: list[int], clock: Clock) -> None:
        self.inner = inner
        self.reminders = reminders
        self.offsets = offsets
        self.clock = clock

    async def book(self, request: BookRequest) -> Booking:
        booking = await self.inner.book(request)
        await self.reminders.schedule(booking, self.offsets, self.clock())
        return booking

    async def cancel(self, booking_id: str) -> Booking:
        booking = await self.inner.cancel(booking_id)
        await self.reminders.drop(booking.tenant, booking_id)
        return booking

    async def reschedule(self, booking_id: str, start: datetime) -> Booking:
        booking = await self.inner.reschedule(booking_id, start)
        await self.reminders.drop(booking.tenant, booking_id)
        await self.reminders.schedule(booking, self.offsets, self.clock())
        return booking

    async def free_slots(self, service: str, day_from: date, day_to: date, now: datetime) -> list[datetime]:
        return await self.inner.free_slots(service, day_from, day_to, now)

    async def is_open(self, day: date) -> bool:
        return await self.inner.is_open(day)

    async def customer_bookings(self, customer: str) -> list[BookingView]:
        return await self.inner.customer_bookings(customer)

    async def active_bookings(self) -> list[Booking]:
        return await self.inner.active_bookings()

    async def block(self, start: datetime, minutes: int) -> None:
        await self.inner.block(start, minutes)

    async def by_id(self, booking_id: str) -> Booking | None:
        return await self.inner.by_id(booking_id)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def listing(settings: Settings, tenant_id: str) -> int:
    """``bookingbot reminders --tenant T``: one line per scheduled reminder, by when it is due."""
    from bot.runtime import Runtime

    runtime = await Runtime.start(settings)
    try:
        tenant = runtime.tenant(tenant_id)
        scheduled = await runtime.reminders.scheduled(tenant_id)
        for reminder in scheduled:
            booking = await tenant.calendar.by_id(reminder.booking_id)
            who = f"{booking.customer} {booking.service}" if booking else "(booking gone: stale)"
            due, start = (f"{m.astimezone(tenant.profile.tz):%Y-%m-%d %H:%M}" for m in (reminder.due, reminder.start))
            before = f"{reminder.offset // 60}h{reminder.offset % 60:02d}"
            print(f"{due}  {before} before {start}  {reminder.booking_id}  {who}")
        print(f"{len(scheduled)} reminders scheduled for {tenant_id}")
    finally:
        await runtime.aclose()
    return 0


async def remind(ctx: dict[str, Any], tenant: str, key: str) -> None:
    """The arq job: fire one reminder at its time (scheduled by :meth:`Reminders.schedule`)."""
    services = ctx["services"]
    reminder = Reminder.parse(tenant, key)
    if tenant not in services.runtime.tenants:  # removed from the config since the booking: nobody sends for it
        log.warning("%s: reminder %s dropped: the tenant is no longer configured", tenant, key)
        await services.runtime.reminders.done(reminder)
        return
    await fire(services.runtime, services.drainer.sender, reminder, datetime.now(UTC))
