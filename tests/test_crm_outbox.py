"""The CRM outbox end to end: real PostgreSQL, the real pipeline and relay, the erxes double (both profiles).

A conversation books, moves and cancels; the double must end with one customer and one deal with the right
dates. erxes down in the middle (and answers lost after the work was done) delays the work and loses or
duplicates nothing. A rejected row holds its customer's later rows until it is queued again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4
from zoneinfo import ZoneInfo

import pytest
from doubles.erxes import ErxesDouble
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot import metrics
from bot.booking.base import Booking, BookingKind, BookRequest
from bot.booking.local import LocalCalendar
from bot.config import load_config
from bot.crm.outbox import Outbox, enqueue
from bot.crm.relay import OutboxRelay
from bot.pipeline import Pipeline
from bot.runtime import Runtime
from bot.settings import CrmConfig, ErxesConfig
from bot.tables import BOOKINGS, CRM_OUTBOX
from channels.base import InboundMessage

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # Monday 09:00 in London
TOKEN = "erxes-app-token"
BOOK = ["haircut tomorrow at 5pm, I'm John Smith", "+447700900123", "yes"]
FAST = {"poll_s": 0.05, "base_delay": 0.05, "max_delay": 0.3}


@pytest.fixture(params=["v1", "v3"])
async def erxes(request: pytest.FixtureRequest) -> AsyncIterator[ErxesDouble]:
    async with ErxesDouble(request.param, TOKEN) as double:
        yield double


@asynccontextmanager
async def crm_runtime(env: dict[str, str], double: ErxesDouble, **erxes: Any) -> AsyncIterator[tuple[Runtime, str]]:
    base = load_config(ROOT / "config.yaml", env=env)
    config = ErxesConfig(url=double.url, profile=double.profile, token=TOKEN, **({"deal_stage_id": "stage-1"} | erxes))
    tenant = f"crm-{uuid4().hex[:10]}"
    cfg = base.tenants["demo"].model_copy(update={"crm": CrmConfig(erxes=config)})
    runtime = await Runtime.start(base.model_copy(update={"tenants": {tenant: cfg}}))
    try:
        yield runtime, tenant
    finally:
        await runtime.drop_tenant(tenant)
        await runtime.aclose()


class Chat:
    def __init__(self, runtime: Runtime, tenant: str) -> None:
        self.pipeline = Pipeline(runtime)
        self.tenant = tenant
        self.user = uuid4().hex[:8]
        self.turns = 0

    @property
    def conversation(self) -> str:
        return f"terminal:{self.user}"

    async def say(self, *lines: str) -> str:
        """Send lines; the dialog state after the last."""
        state = ""
        for line in lines:
            self.turns += 1
            msg = InboundMessage(tenant=self.tenant, channel="terminal", user_id=self.user,
                                 event_id=f"{self.user}-{self.turns}", text=line)
            turn = await self.pipeline.handle(msg, NOW)
            assert turn.replies, f"no reply to {line!r}"
            state = turn.session.state
        return state


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def rows(runtime: Runtime, tenant: str) -> list[tuple[str, str, int]]:
    async with runtime.db.connect() as conn:
        result = await conn.execute(
            select(CRM_OUTBOX.c.op, CRM_OUTBOX.c.status, CRM_OUTBOX.c.attempts)
            .where(CRM_OUTBOX.c.tenant == tenant)
            .order_by(CRM_OUTBOX.c.id)
        )
        return [(r.op, r.status, r.attempts) for r in result]


async def settle(relay: OutboxRelay) -> None:
    assert await relay.settle(30), "the outbox did not drain"


async def test_booking_move_and_cancel_become_one_customer_and_one_deal(
    services_env: dict[str, str], erxes: ErxesDouble
) -> None:
    async with crm_runtime(services_env, erxes, tag_ids=["tag-bot"]) as (runtime, tenant):
        relay = runtime.start_relay(**FAST)
        chat = Chat(runtime, tenant)
        assert await chat.say(*BOOK) == "booked"
        await settle(relay)
        assert [r[:2] for r in await rows(runtime, tenant)] == [("customer", "done"), ("booking", "done")]
        [customer] = erxes.customers.values()
        assert (customer["code"], customer["firstName"], customer["lastName"]) == (chat.conversation, "John", "Smith")
        assert customer["primaryPhone"] == "+447700900123" and customer["tagIds"] == ["tag-bot"]
        [deal] = erxes.deals.values()
        assert deal["stageId"] == "stage-1" and deal["customerIds"] == [customer["_id"]]
        assert deal["startDate"] == datetime(2026, 11, 24, 17, 0, tzinfo=UTC)
        assert deal["closeDate"] == datetime(2026, 11, 24, 18, 0, tzinfo=UTC)

        assert await chat.say("can I reschedule?", "Friday", "5pm", "yes") == "rescheduled"
        await settle(relay)
        [deal] = erxes.deals.values()
        assert deal["startDate"] == datetime(2026, 11, 27, 17, 0, tzinfo=UTC)
        assert await chat.say("cancel my booking", "yes") == "cancelled"
        await settle(relay)
        [deal] = erxes.deals.values()
        assert deal["name"].startswith("Cancelled: Haircut - John Smith")
        assert len(erxes.customers) == 1


async def test_outage_delays_but_loses_and_duplicates_nothing(services_env: dict[str, str], erxes: ErxesDouble) -> None:
    async with crm_runtime(services_env, erxes, tag_ids=["tag-bot"]) as (runtime, tenant):
        erxes.outage = True
        relay = runtime.start_relay(**FAST)
        chat = Chat(runtime, tenant)
        assert await chat.say(*BOOK) == "booked"  # the customer is answered while erxes is down

        async def retried() -> bool:  # the customer's head row was tried and put back; the rest wait behind it
            found = await rows(runtime, tenant)
            return len(found) == 2 and found[0][2] >= 2 and all(status == "pending" for _, status, _ in found)

        await until(retried)
        assert await chat.say("can I reschedule?", "Friday", "5pm", "yes") == "rescheduled"
        assert not erxes.customers and not erxes.deals
        assert [op for op, _, _ in await rows(runtime, tenant)] == ["customer", "booking", "reschedule"]
        await metrics.observe_outbox(runtime.outbox)  # what /metrics shows
        assert metrics.OUTBOX_ROWS.labels("pending")._value.get() >= 3
        assert metrics.OUTBOX_AGE.labels("pending")._value.get() > 0

        # erxes comes back; its first two writes (the customer, its tags) are done but their answers lost
        erxes.lose_next_answers(2)
        erxes.outage = False
        await settle(relay)
        assert [status for _, status, _ in await rows(runtime, tenant)] == ["done", "done", "done"]
        [customer] = erxes.customers.values()
        assert customer["tagIds"] == ["tag-bot"]
        [deal] = erxes.deals.values()
        assert deal["startDate"] == datetime(2026, 11, 27, 17, 0, tzinfo=UTC)


async def test_handoff_puts_a_note_and_a_tag_on_the_customer(services_env: dict[str, str], erxes: ErxesDouble) -> None:
    async with crm_runtime(services_env, erxes) as (runtime, tenant):
        relay = runtime.start_relay(**FAST)
        chat = Chat(runtime, tenant)
        assert await chat.say("haircut tomorrow at 5pm, I'm John", "I want to talk to a real person") == "handoff"
        await settle(relay)
        [customer] = erxes.customers.values()
        [tag] = erxes.tags.values()
        assert tag["name"] == "bookingbot: handoff" and customer["tagIds"] == [tag["_id"]]
        assert [n["contentTypeId"] for n in erxes.notes] == [customer["_id"]]
        assert "person" in erxes.notes[0]["content"]


async def test_rejected_row_holds_its_customer_until_retried(services_env: dict[str, str], erxes: ErxesDouble) -> None:
    async with crm_runtime(services_env, erxes, deal_stage_id="stage-new") as (runtime, tenant):
        relay = runtime.start_relay(**FAST)
        chat = Chat(runtime, tenant)
        await chat.say(*BOOK)

        async def failed() -> bool:
            return [s for _, s, _ in await rows(runtime, tenant)] == ["done", "failed"]

        await until(failed)  # "Stage not found": retrying cannot help
        await chat.say("can I reschedule?", "Friday", "5pm", "yes")
        await asyncio.sleep(0.3)  # several relay rounds: the reschedule waits behind the failed booking
        assert [s for _, s, _ in await rows(runtime, tenant)] == ["done", "failed", "pending"]
        erxes.stage_ids.add("stage-new")  # the operator creates the stage, then `bookingbot outbox retry`
        assert await runtime.outbox.retry_failed(tenant) == 1
        await settle(relay)
        [deal] = erxes.deals.values()
        assert deal["startDate"] == datetime(2026, 11, 27, 17, 0, tzinfo=UTC)


async def test_a_refused_token_parks_at_once_and_a_fixed_one_resumes_in_order(
    services_env: dict[str, str], erxes: ErxesDouble, caplog: pytest.LogCaptureFixture
) -> None:
    parked_before = metrics.OUTBOX_PARKED.labels("auth")._value.get()
    erxes.token = "rotated"  # staff revoked the bot's app token
    async with crm_runtime(services_env, erxes) as (runtime, tenant):
        relay = runtime.start_relay(**FAST)
        chat = Chat(runtime, tenant)
        with caplog.at_level(logging.INFO, logger="bot.crm.relay"):
            await chat.say(*BOOK)

            async def parked() -> bool:
                return await rows(runtime, tenant) == [("customer", "failed", 1), ("booking", "pending", 0)]

            await until(parked)
            calls = len(erxes.calls)
            await asyncio.sleep(0.5)  # ten relay polls and backoff delays: nothing is tried again
            assert len(erxes.calls) == calls
            await chat.say("can I reschedule?", "Friday", "5pm", "yes")
            await asyncio.sleep(0.3)  # the reschedule waits behind the parked row, as the booking does
        assert await rows(runtime, tenant) == [
            ("customer", "failed", 1), ("booking", "pending", 0), ("reschedule", "pending", 0)]
        assert metrics.OUTBOX_PARKED.labels("auth")._value.get() == parked_before + 1
        [report] = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert tenant in report.getMessage() and "crm.erxes.token" in report.getMessage()
        [row, *_] = await runtime.outbox.open_rows(tenant)
        assert "crm.erxes.token" in (row.last_error or "")  # what `bookingbot outbox` shows

        erxes.token = TOKEN  # the operator puts a valid token in place, then `bookingbot outbox retry`
        assert await runtime.outbox.retry_failed(tenant) == 1
        await settle(relay)
        assert [s for _, s, _ in await rows(runtime, tenant)] == ["done", "done", "done"]
        [customer] = erxes.customers.values()
        [deal] = erxes.deals.values()
        assert deal["customerIds"] == [customer["_id"]]
        assert deal["startDate"] == datetime(2026, 11, 27, 17, 0, tzinfo=UTC)


async def test_a_denied_permission_parks_the_row(services_env: dict[str, str], erxes: ErxesDouble) -> None:
    parked_before = metrics.OUTBOX_PARKED.labels("permission")._value.get()
    erxes.deny("dealsAdd")
    async with crm_runtime(services_env, erxes) as (runtime, tenant):
        relay = runtime.start_relay(**FAST)
        await Chat(runtime, tenant).say(*BOOK)

        async def parked() -> bool:
            return await rows(runtime, tenant) == [("customer", "done", 1), ("booking", "failed", 1)]

        await until(parked)
        assert metrics.OUTBOX_PARKED.labels("permission")._value.get() == parked_before + 1
        erxes.reset()  # the app's user group gets the permission (and erxes forgets this test's records)
        assert await runtime.outbox.retry_failed(tenant) == 1
        await settle(relay)
        assert len(erxes.deals) == 1


async def test_a_lost_note_answer_leaves_one_note(services_env: dict[str, str], erxes: ErxesDouble) -> None:
    async with crm_runtime(services_env, erxes, deal_stage_id="") as (runtime, tenant):  # bookings become notes
        relay = runtime.start_relay(**FAST)
        erxes.lose_next_answers(1, field="internalNotesAdd")
        await Chat(runtime, tenant).say(*BOOK)
        await settle(relay)
        assert await rows(runtime, tenant) == [("customer", "done", 1), ("booking", "done", 2)]
        [customer] = erxes.customers.values()
        [note] = erxes.notes
        assert note["contentTypeId"] == customer["_id"] and note["content"].startswith("Booked via the bot")


async def test_a_lost_handoff_answer_leaves_one_note(services_env: dict[str, str], erxes: ErxesDouble) -> None:
    async with crm_runtime(services_env, erxes) as (runtime, tenant):
        relay = runtime.start_relay(**FAST)
        erxes.lose_next_answers(1, field="internalNotesAdd")
        erxes.lose_next_answers(1, field="tagsAdd")
        chat = Chat(runtime, tenant)
        assert await chat.say("haircut tomorrow at 5pm, I'm John", "I want to talk to a real person") == "handoff"
        await settle(relay)
        [customer] = erxes.customers.values()
        [tag] = erxes.tags.values()
        assert customer["tagIds"] == [tag["_id"]]
        assert [n["contentTypeId"] for n in erxes.notes] == [customer["_id"]]


async def test_lost_message_answers_mirror_each_message_once(
    services_env: dict[str, str], erxes: ErxesDouble
) -> None:
    mirror = {"inbox_integration_id": erxes.integration_id, "brand_code": erxes.brand_code}
    async with crm_runtime(services_env, erxes, **mirror) as (runtime, tenant):
        relay = runtime.start_relay(**FAST)
        chat = Chat(runtime, tenant)
        erxes.lose_next_answers(1, field="widgetsInsertMessage")  # the first: the conversation's id is lost too
        await chat.say("hi")
        await settle(relay)
        erxes.lose_next_answers(1, field="widgetsInsertMessage")  # a later one, in the known conversation
        await chat.say("hi")  # the same text again is a new message, not the retried one
        await settle(relay)
        assert [m["content"] for m in erxes.messages] == await _logged(runtime, tenant, chat.conversation)
        assert len({m["conversationId"] for m in erxes.messages}) == 1
        assert sorted(attempts for op, _, attempts in await rows(runtime, tenant) if op == "message")[-3:] == [1, 2, 2]


async def test_a_row_whose_relay_died_mid_attempt_counts_as_retried(pg_engine: AsyncEngine) -> None:
    tenant = f"crm-lease-{uuid4().hex[:10]}"
    async with pg_engine.begin() as conn:
        await enqueue(conn, tenant, "web:1", "handoff", {"reason": "requested"})
    outbox = Outbox(pg_engine, lease=timedelta(seconds=1))
    now = datetime.now(UTC)
    [first] = await outbox.claim([tenant], now)
    assert not first.retried
    # the relay holding it dies before it records an outcome; once the lease runs out another relay claims it
    [again] = await outbox.claim([tenant], now + timedelta(seconds=2))
    assert again.id == first.id and again.attempts == 0 and again.retried
    async with pg_engine.begin() as conn:
        await conn.execute(CRM_OUTBOX.delete().where(CRM_OUTBOX.c.tenant == tenant))


async def test_inbox_mirror_keeps_the_order(services_env: dict[str, str], erxes: ErxesDouble) -> None:
    mirror = {"inbox_integration_id": erxes.integration_id, "brand_code": erxes.brand_code}
    async with crm_runtime(services_env, erxes, **mirror) as (runtime, tenant):
        relay = runtime.start_relay(**FAST)
        chat = Chat(runtime, tenant)
        await chat.say("hi", "haircut tomorrow at 5pm")
        await settle(relay)
        logged = await _logged(runtime, tenant, chat.conversation)
        assert [m["content"] for m in erxes.messages] == logged
        assert len({m["conversationId"] for m in erxes.messages}) == 1


async def _logged(runtime: Runtime, tenant: str, conversation: str) -> list[str]:
    await runtime.log.flush()
    return [
        (m.text or "") if m.direction == "in" else f"[bot] {m.text}"
        for m in await runtime.log.conversation(tenant, conversation)
    ]


async def test_crm_rows_commit_and_roll_back_with_the_booking(pg_engine: AsyncEngine) -> None:
    tenant = f"crm-tx-{uuid4().hex[:10]}"
    fail = {"now": False}

    async def hook(conn: AsyncConnection, kind: BookingKind, booking: Booking) -> None:
        await enqueue(conn, tenant, booking.customer, "booking" if kind == "book" else kind, {}, booking_id=booking.id)
        if fail["now"]:
            raise RuntimeError("the transaction must roll back")

    calendar = LocalCalendar(pg_engine, tenant, ZoneInfo("Europe/London"), {"tue": ["10:00-20:00"]},
                             {"haircut": 60}, 30, 30, on_write=hook)
    start = datetime(2026, 11, 24, 17, 0, tzinfo=UTC)
    request = BookRequest(key="k1", customer="web:1", service="haircut", start=start, name="Ann", phone="+447700900123")
    booking = await calendar.book(request)
    await calendar.book(request)  # the same key again: the booking it made, and no second row
    fail["now"] = True
    with pytest.raises(RuntimeError):
        await calendar.cancel(booking.id)

    async def count(table: Any) -> int:
        async with pg_engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(table).where(table.c.tenant == tenant)) or 0)

    assert await count(CRM_OUTBOX) == 1 and await count(BOOKINGS) == 1
    assert (await calendar.active_bookings())[0].status == "active"  # the cancel rolled back with its CRM row
    async with pg_engine.begin() as conn:
        for table in (CRM_OUTBOX, BOOKINGS):
            await conn.execute(table.delete().where(table.c.tenant == tenant))
