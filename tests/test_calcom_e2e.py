"""End to end with cal.com: the real server (drains in process), a tenant on ``backend: calcom`` against the
cal.com double, customers on the Telegram and WhatsApp doubles. cal.com webhooks are signed and posted by
the double; reminders are fired and their buttons pressed through Telegram callbacks."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import uuid4
from zoneinfo import ZoneInfo

import pytest
from _stack import ROOT, A, channels, fixture, serve_app
from calcom_setup import API_KEY, EVENT_TYPES, WEBHOOK_SECRET, demo_double
from doubles.calcom import CalcomDouble
from doubles.telegram import TelegramDouble
from doubles.whatsapp import WhatsAppDouble

from bot.booking.base import Booking, BookRequest
from bot.config import load_config
from bot.ingest import InProcess
from bot.reminders import fire, listing
from bot.runtime import Runtime
from bot.sender import Sender
from bot.settings import BookingConfig, CalcomConfig, RemindersConfig, WhatsAppTemplateConfig
from bot.web.server import create_app
from bot.worker import Services

LONDON = ZoneInfo("Europe/London")
_ids = itertools.count(1)


def workday(after_days: int) -> date:
    """A Monday-to-Friday date at least ``after_days`` from today (London): always in the future, always open."""
    day = datetime.now(LONDON).date() + timedelta(days=after_days)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=LONDON)


@dataclass
class CalStack:
    runtime: Runtime
    services: Services
    url: str
    tenant: str
    calcom: CalcomDouble
    telegram: TelegramDouble
    whatsapp: WhatsAppDouble

    @property
    def sender(self) -> Sender:
        return Sender(self.runtime.redis, self.services.channels.outlet)

    async def idle(self) -> None:
        scheduler = self.services.ingest.scheduler
        assert isinstance(scheduler, InProcess)
        await asyncio.wait_for(scheduler.idle(), 30)

    async def emit(self, body: bytes, secret: str = WEBHOOK_SECRET, tenant: str | None = None) -> int:
        delivery = await self.calcom.emit(f"{self.url}/webhooks/calcom/{tenant or self.tenant}", body, secret)
        await self.idle()
        return delivery.status

    async def book(self, customer: str, start: datetime, **extra: Any) -> Booking:
        request = BookRequest(key=f"e2e-{uuid4().hex}", customer=customer, service="haircut", start=start,
                              name="John", phone=extra.pop("phone", "+447700900123"), **extra)  # fmt: skip
        return await self.runtime.tenant(self.tenant).calendar.book(request)

    def to(self, user: int) -> list[dict[str, Any]]:
        return [m for m in self.telegram.sent if m["chat_id"] == str(user)]

    async def press(self, user: int, message: dict[str, Any], label: str) -> list[dict[str, Any]]:
        [button] = [b for row in message["reply_markup"]["inline_keyboard"] for b in row if b["text"] == label]
        update = copy.deepcopy(fixture("telegram", "callback", update_id=930_000_000 + next(_ids)))
        query = update["callback_query"]
        query["id"], query["data"] = uuid4().hex, button["callback_data"]
        query["from"]["id"] = query["message"]["chat"]["id"] = user
        query["message"].update(message_id=message["message_id"], reply_markup=message["reply_markup"])
        return await self._deliver(user, update)

    async def say(self, user: int, text: str) -> list[dict[str, Any]]:
        update = copy.deepcopy(fixture("telegram", "text", update_id=930_000_000 + next(_ids)))
        update["message"]["from"]["id"] = update["message"]["chat"]["id"] = user
        update["message"]["text"] = text
        return await self._deliver(user, update)

    async def _deliver(self, user: int, update: dict[str, Any]) -> list[dict[str, Any]]:
        before = len(self.to(user))
        url = f"{self.url}/webhooks/telegram/{self.tenant}"
        assert (await self.telegram.deliver(url, update, A.tg_secret)).status == 200
        await self.idle()
        return self.to(user)[before:]


@asynccontextmanager
async def calstack(env: dict[str, str]) -> AsyncIterator[CalStack]:
    base = load_config(ROOT / "config.yaml", env=env)
    tenant = f"cal-e2e-{uuid4().hex[:10]}"
    async with (
        demo_double() as calcom,
        TelegramDouble(A.tg_token) as tg,
        WhatsAppDouble(A.wa_number, A.wa_token) as wa,
    ):
        cfg = CalcomConfig(api_base=calcom.url, api_key=API_KEY, webhook_secret=WEBHOOK_SECRET,
                           event_types=EVENT_TYPES)  # fmt: skip
        demo = base.tenants["demo"]
        reminders = RemindersConfig(
            before=["24h", "2h"], whatsapp_template=WhatsAppTemplateConfig(name="booking_reminder", language="en_GB")
        )
        tenant_cfg = demo.model_copy(update={
            "channels": channels(A, tg.url, wa.url, "http://127.0.0.1:9"),
            "booking": BookingConfig(backend="calcom", calcom=cfg),
            "reminders": reminders,
        })  # fmt: skip
        settings = base.model_copy(update={"tenants": {tenant: tenant_cfg}})
        runtime = await Runtime.start(settings)
        services = Services.build(runtime, in_process=True, clock=lambda: datetime.now(UTC))
        server, task, url = await serve_app(create_app(settings, services=services))
        try:
            yield CalStack(runtime, services, url, tenant, calcom, tg, wa)
        finally:
            server.should_exit = True
            await task
            await services.aclose()
            await runtime.drop_tenant(tenant)
            await runtime.aclose()


@pytest.fixture
async def s(services_env: dict[str, str]) -> AsyncIterator[CalStack]:
    async with calstack(services_env) as st:
        yield st


def user_id() -> int:
    return 700_000_000 + next(_ids) * 1000 + int(uuid4().int % 1000)


async def fire_all(s: CalStack, booking_id: str) -> list[bool]:
    scheduled = [r for r in await s.runtime.reminders.scheduled(s.tenant) if r.booking_id == booking_id]
    return [await fire(s.runtime, s.sender, r, r.due) for r in scheduled]


async def test_reminders_are_sent_once_and_their_buttons_work(s: CalStack) -> None:
    user = user_id()
    day = workday(3)
    booking = await s.book(f"telegram:{user}", at(day, 17))
    scheduled = await s.runtime.reminders.scheduled(s.tenant)
    assert [r.offset for r in scheduled] == [24 * 60, 2 * 60]
    assert [r.due for r in scheduled] == [at(day, 17) - timedelta(hours=24), at(day, 17) - timedelta(hours=2)]
    await s.runtime.reminders.schedule(booking, [24 * 60, 2 * 60], datetime.now(UTC))  # a redriven booking
    assert await s.runtime.reminders.scheduled(s.tenant) == scheduled
    assert await fire_all(s, booking.id) == [True, True]
    reminders = s.to(user)
    assert len(reminders) == 2 and "Reminder" in reminders[0]["text"] and "17:00" in reminders[0]["text"]
    labels = [b["text"] for row in reminders[0]["reply_markup"]["inline_keyboard"] for b in row]
    assert labels == ["Confirm", "Reschedule", "Cancel"]
    for reminder in scheduled:  # a retried job finds the reminder sent: nothing goes twice
        await fire(s.runtime, s.sender, reminder, reminder.due)
    assert len(s.to(user)) == 2

    [confirmed] = await s.press(user, reminders[0], "Confirm")
    assert "Thank you" in confirmed["text"] and "17:00" in confirmed["text"]

    asked = await s.press(user, reminders[1], "Reschedule")
    assert "Which day" in asked[-1]["text"]
    new_day = day + timedelta(days=1) if day.weekday() < 4 else day - timedelta(days=1)
    await s.say(user, f"{new_day.day} {new_day:%B}")
    await s.say(user, "12:00")
    done = await s.say(user, "yes")
    assert "12:00" in done[-1]["text"]
    [moved] = s.calcom.accepted()
    assert moved.start == at(new_day, 12) and s.calcom.bookings[booking.id].status == "cancelled"
    assert {r.booking_id for r in await s.runtime.reminders.scheduled(s.tenant)} == {moved.uid}

    [stale] = await s.press(user, reminders[0], "Cancel")  # the old booking's reminder: it is gone
    assert "couldn't find" in stale["text"]
    await fire_all(s, moved.uid)
    fresh = s.to(user)[-1]
    assert "12:00" in fresh["text"]
    asked = await s.press(user, fresh, "Cancel")
    assert "Cancel your" in asked[-1]["text"]
    await s.say(user, "yes")
    assert s.calcom.accepted() == [] and await s.runtime.reminders.scheduled(s.tenant) == []


async def test_reminder_already_due_when_booked_is_skipped(s: CalStack, capsys: pytest.CaptureFixture[str]) -> None:
    start = at(workday(3), 16)
    booking = await s.book(f"telegram:{user_id()}", start)
    await s.runtime.reminders.drop(s.tenant, booking.id)
    made = await s.runtime.reminders.schedule(booking, [24 * 60, 2 * 60], now=start - timedelta(hours=3))
    assert [r.offset for r in made] == [120]
    assert [r.offset for r in await s.runtime.reminders.scheduled(s.tenant)] == [120]
    assert await listing(s.runtime.settings, s.tenant) == 0  # `bookingbot reminders --tenant T`
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{start - timedelta(hours=2):%Y-%m-%d %H:%M}  2h00 before {start:%Y-%m-%d %H:%M}")
    assert booking.id in printed[0] and "haircut" in printed[0] and printed[-1].startswith("1 reminders")
    claimed = await s.runtime.reminders.claim_due(s.tenant, start - timedelta(minutes=119))  # the embedded loop
    assert [r.offset for r in claimed] == [120]
    assert await s.runtime.reminders.claim_due(s.tenant, start - timedelta(minutes=119)) == []  # leased


async def test_whatsapp_outside_24h_gets_the_template(s: CalStack) -> None:
    phone = f"4477009{next(_ids):05d}"
    booking = await s.book(f"whatsapp:{phone}", at(workday(4), 11), phone=f"+{phone}")
    assert (await fire_all(s, booking.id))[0]
    sent = s.whatsapp.sent[0]
    assert len(s.whatsapp.sent) == 2  # both reminders
    assert sent["type"] == "template" and sent["template"]["name"] == "booking_reminder"
    assert sent["template"]["language"] == {"code": "en_GB"}
    quick = [c for c in sent["template"]["components"] if c["type"] == "button"]
    assert [c["parameters"][0]["payload"].split(":")[1] for c in quick] == ["confirm", "reschedule", "cancel"]


async def test_calcom_webhooks_update_the_record_reminders_and_tell_the_customer(s: CalStack) -> None:
    user = user_id()
    conversation = f"telegram:{user}"
    await s.runtime.log.record_customer(s.tenant, conversation, "telegram", name="John", phone="+447700900999")
    day = workday(3)
    booking = await s.book(conversation, at(day, 15), phone="+447700900999")
    own = s.calcom.bookings[booking.id]
    assert await s.emit(s.calcom.webhook_body("BOOKING_CREATED", own)) == 200  # our own: nothing
    assert s.to(user) == []

    old, new = s.calcom.reschedule_in_ui(booking.id, at(day, 18))
    body = s.calcom.webhook_body("BOOKING_RESCHEDULED", new, from_uid=old.uid)
    assert await s.emit(body, secret="wrong") == 401
    assert await s.emit(body, tenant="nope") == 404
    assert await s.emit(b"{not json") == 400
    assert await s.emit(b'{"triggerEvent": "MEETING_ENDED", "payload": {}}') == 200  # not handled: ignored
    for _ in range(2):  # a repeated webhook does nothing twice
        assert await s.emit(body) == 200
    [told] = s.to(user)
    assert "moved" in told["text"] and "18:00" in told["text"]
    calendar = s.runtime.tenant(s.tenant).calendar
    assert [(b.id, b.start) for b in await calendar.active_bookings()] == [(new.uid, at(day, 18))]
    assert {r.booking_id for r in await s.runtime.reminders.scheduled(s.tenant)} == {new.uid}

    s.calcom.cancel_in_ui(new.uid)
    cancelled = s.calcom.webhook_body("BOOKING_CANCELLED", new)
    assert await s.emit(cancelled) == 200 and await s.emit(cancelled) == 200
    assert len(s.to(user)) == 2 and "cancelled" in s.to(user)[-1]["text"]
    assert await calendar.active_bookings() == [] and await s.runtime.reminders.scheduled(s.tenant) == []

    attendee = {"name": "John", "email": "j@example.com", "phoneNumber": "+447700900999"}
    made = s.calcom.create_in_ui(EVENT_TYPES["manicure"], at(day, 11), attendee)
    stranger = s.calcom.create_in_ui(EVENT_TYPES["manicure"], at(day, 13), {"name": "X", "email": "x@example.com"})
    padded = json.loads(s.calcom.webhook_body("BOOKING_CREATED", made))
    padded["payload"]["description"] = "x" * 20_000  # real payloads carry much we do not read
    assert await s.emit(json.dumps(padded).encode()) == 200
    assert await s.emit(s.calcom.webhook_body("BOOKING_CREATED", stranger)) == 200
    [linked] = await calendar.active_bookings()
    assert (linked.id, linked.customer, linked.service) == (made.uid, conversation, "manicure")
    assert [v.id for v in await calendar.customer_bookings(conversation)] == [made.uid]
    assert {r.booking_id for r in await s.runtime.reminders.scheduled(s.tenant)} == {made.uid}


async def test_embedded_loop_fires_due_reminders(s: CalStack) -> None:
    user = user_id()
    start = at(workday(5), 13)
    booking = await s.book(f"telegram:{user}", start)
    later = start - timedelta(minutes=30)  # both reminders are due by then
    loop = asyncio.create_task(s.runtime.reminders.loop(s.runtime, s.sender, every_s=0.05, clock=lambda: later))
    try:
        for _ in range(600):  # up to 30 s on a loaded machine
            if len(s.to(user)) >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        loop.cancel()
    assert all(booking.id in str(m["reply_markup"]) for m in s.to(user))
    assert await s.runtime.reminders.scheduled(s.tenant) == []
