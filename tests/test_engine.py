"""The dialog engine, driven through whole conversations against the real local calendar (SQLite).

Every test talks to its own tenant id on a shared database, so calendars never see each other's bookings.
Effects go through ``bot.effects.execute`` (the pipeline's own code) and their outcomes back into the engine.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot import db, effects
from bot.booking.base import BookRequest
from bot.config import load_config
from bot.messagelog import MessageLog
from bot.runtime import Tenant, build_tenant
from bot.settings import TenantConfig
from dialogs.engine import Engine
from dialogs.exceptions import TemplateError
from dialogs.loader import builtin_template
from dialogs.model import BookSlot, Effect, EffectOutcome, Handoff, Reply, SyncCustomer, UserInput
from dialogs.session import Session

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime.fromisoformat("2026-11-23T09:00:00+00:00")  # a Monday
LONDON = ZoneInfo("Europe/London")
PHONE = "+44 7700 900123"


@pytest.fixture(scope="module")
def demo_configs() -> dict[str, TenantConfig]:
    return load_config(ROOT / "config.yaml", env={}).tenants


@pytest.fixture(scope="module")
async def database(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AsyncEngine]:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('engine') / 'bookings.db'}"
    await db.migrate(url)
    engine = db.make_engine(url)
    yield engine
    await engine.dispose()


class Chat:
    """One customer talking to one tenant: sends messages, runs effects, keeps what came back."""

    log: MessageLog  # set by the module's message_log fixture

    def __init__(self, tenant: Tenant, now: datetime = NOW) -> None:
        self.tenant = tenant
        self.engine = tenant.engine
        self.now = now
        self.session = self.engine.new_session(f"test:{uuid.uuid4().hex[:8]}", customer=f"c-{uuid.uuid4().hex}")
        self.replies: list[Reply] = []
        self.effects: list[Effect] = []

    async def say(self, text: str = "", *, button: str | None = None, contact: str | None = None) -> list[str]:
        result = await self.engine.step(self.session, UserInput(text=text, button=button, phone=contact),
                                        self.now, self.tenant.calendar)  # fmt: skip
        self.replies, self.effects = list(result.replies), list(result.effects)
        for effect in result.effects:
            outcome = await effects.execute(effect, self.tenant, self.session, self.log)
            if outcome is not None:
                reaction = await self.engine.resolve(self.session, outcome, self.now, self.tenant.calendar)
                self.replies += reaction.replies
        for reply in self.replies:
            assert all(len(b.value.encode()) <= 64 for b in reply.buttons), reply.buttons
            assert len(reply.buttons) <= 10
            assert all(value in reply.text for value in reply.facts.values()), reply
        assert Session.from_json(self.session.to_json()) == self.session
        return self.keys

    async def press(self, label: str) -> list[str]:
        value = next((b.value for r in self.replies for b in r.buttons if b.label == label), None)
        assert value is not None, f"no button {label!r} in {self.labels}"
        return await self.say(button=value)

    @property
    def keys(self) -> list[str]:
        return [r.key for r in self.replies]

    @property
    def labels(self) -> list[str]:
        return [b.label for r in self.replies for b in r.buttons]

    @property
    def text(self) -> str:
        return "\n".join(r.text for r in self.replies)

    @property
    def state(self) -> str:
        return self.session.state

    @property
    def slots(self) -> dict[str, str]:
        return self.session.slots

    async def book_existing(self, start: str, service: str = "haircut") -> str:
        """A booking this customer already has (made outside the conversation)."""
        moment = datetime.fromisoformat(start).replace(tzinfo=self.tenant.profile.tz)
        request = BookRequest(key=uuid.uuid4().hex, customer=self.session.customer, service=service,
                              start=moment, name="John", phone="+447700900123")  # fmt: skip
        return (await self.tenant.calendar.book(request)).id


def _tenant(database: AsyncEngine, config: TenantConfig, template_id: str, engine: Engine | None = None) -> Tenant:
    tenant = build_tenant(f"{template_id}~{uuid.uuid4().hex[:8]}", config, database)
    return tenant if engine is None else dataclasses.replace(tenant, engine=engine)


@pytest.fixture(scope="module", autouse=True)
async def message_log(database: AsyncEngine) -> AsyncIterator[MessageLog]:
    """The real message log on the test database: effects record customers there."""
    log = MessageLog(database)
    await log.start()
    Chat.log = log
    yield log
    await log.aclose()


@pytest.fixture
def demo(database: AsyncEngine, demo_configs: dict[str, TenantConfig]) -> Tenant:
    return _tenant(database, demo_configs["demo"], "demo")


@pytest.fixture
def demo_ru(database: AsyncEngine, demo_configs: dict[str, TenantConfig]) -> Tenant:
    return _tenant(database, demo_configs["demo-ru"], "demo-ru")


async def _to_confirm(chat: Chat) -> None:
    await chat.say("haircut tomorrow at 5pm, I'm John")
    assert await chat.say(PHONE) == ["confirm"]


# --- booking -------------------------------------------------------------------------------------------------


async def test_several_slots_in_one_message_ask_only_for_what_is_missing(demo: Tenant) -> None:
    chat = Chat(demo)
    assert await chat.say("Hi, haircut tomorrow at 5pm, I'm John") == ["ask_phone"]
    assert chat.slots == {"service": "haircut", "date": "2026-11-24", "time": "17:00", "name": "John"}
    assert await chat.say(PHONE) == ["confirm"]
    assert "Please check: haircut, Tue 24 Nov at 17:00, for John, phone +447700900123" in chat.text  # sentence case
    assert chat.labels == ["Yes", "No"]


async def test_happy_path_books_through_the_calendar(demo: Tenant) -> None:
    chat = Chat(demo)
    assert await chat.say("hello") == ["greeting", "ask_service"]
    assert chat.labels == ["Haircut", "Manicure", "Hair colouring"]
    assert await chat.press("Haircut") == ["ask_date"]
    assert chat.labels[:2] == ["Mon 23 Nov", "Tue 24 Nov"]
    assert await chat.press("Tue 24 Nov") == ["ask_time"]
    assert chat.labels[0] == "10:00"  # nothing asked: earliest first
    assert await chat.say("17:00") == ["ask_name"]
    assert await chat.say("John Smith") == ["ask_phone"]
    assert await chat.say("07700 900123") == ["confirm"]
    assert await chat.say("yes") == ["booked"]
    sync, book = chat.effects
    assert isinstance(sync, SyncCustomer) and sync.phone == "+447700900123"
    assert isinstance(book, BookSlot)
    start = datetime(2026, 11, 24, 17, 0, tzinfo=LONDON)
    assert book.key == f"{chat.session.conversation}|haircut|{start.isoformat()}"
    assert (book.start, book.minutes, book.name) == (start, 60, "John Smith")
    assert chat.state == "booked" and chat.session.booking_id
    assert chat.replies[-1].facts == {"service": "haircut", "date": "Tue 24 Nov", "time": "17:00", "name": "John Smith"}
    [booking] = await demo.calendar.active_bookings()
    assert (booking.id, booking.start, booking.customer) == (chat.session.booking_id, start, chat.session.customer)


async def test_a_taken_time_gets_the_nearest_free_times(demo: Tenant) -> None:
    await demo.calendar.block(datetime(2026, 11, 24, 17, 0, tzinfo=LONDON), 60)
    chat = Chat(demo)
    assert await chat.say("haircut tomorrow at 5pm") == ["taken_time"]
    assert chat.state == "ask_time" and "time" not in chat.slots
    assert "17:00 on Tue 24 Nov is taken" in chat.text
    assert chat.labels[:4] == ["16:00", "18:00", "15:30", "18:30"]  # 16:30 and 17:30 overlap the busy hour
    assert await chat.press("18:00") == ["ask_name"]


async def test_after_six_offers_times_from_six(demo: Tenant) -> None:
    chat = Chat(demo)
    assert await chat.say("manicure tomorrow after 6") == ["ask_time"]
    assert chat.labels == ["18:00", "18:30", "19:00"]  # 45 minutes must end by 20:00


async def test_a_closed_day_gets_the_next_open_days(demo: Tenant) -> None:
    chat = Chat(demo)
    assert await chat.say("manicure on Sunday") == ["closed_date"]
    assert chat.state == "ask_date" and "date" not in chat.slots
    assert "closed on Sundays" in chat.text
    assert chat.labels[0] == "Mon 30 Nov"


async def test_a_full_day_gets_the_next_days_with_free_times(demo: Tenant) -> None:
    await demo.calendar.block(datetime(2026, 11, 24, 10, 0, tzinfo=LONDON), 600)
    chat = Chat(demo)
    assert await chat.say("haircut tomorrow at 5pm") == ["full_date"]
    assert chat.state == "ask_date" and "date" not in chat.slots
    assert chat.labels[0] == "Wed 25 Nov"


async def test_past_dates_and_times_are_corrected_politely(demo: Tenant) -> None:
    chat = Chat(demo)
    await chat.say("haircut")
    assert await chat.say(button="date:2026-11-20") == ["past_date"]
    assert chat.state == "ask_date" and chat.labels[0] == "Mon 23 Nov"
    assert await chat.say("today at 8am") == ["past_time"]
    assert chat.slots["date"] == "2026-11-23" and "time" not in chat.slots
    assert chat.labels[0] == "10:00"


async def test_too_far_ahead_is_refused(demo: Tenant) -> None:
    chat = Chat(demo)
    await chat.say("haircut")
    assert await chat.say(button="date:2027-06-01") == ["too_far_date"]
    assert "30 days ahead" in chat.text


async def test_corrections_at_ask_name_and_at_confirm(demo: Tenant) -> None:
    chat = Chat(demo)
    await chat.say("haircut tomorrow at 5pm")
    assert await chat.say("actually Friday") == ["ask_name"]
    assert chat.slots["date"] == "2026-11-27" and chat.slots["time"] == "17:00"
    await chat.say("John")
    assert await chat.say(PHONE) == ["confirm"]
    assert await chat.say("make it 6pm") == ["confirm"]
    assert chat.slots["time"] == "18:00" and "Fri 27 Nov at 18:00" in chat.text
    assert await chat.say("no, manicure") == ["confirm"]
    assert chat.slots["service"] == "manicure" and chat.slots["name"] == "John"


async def test_changing_the_date_drops_a_time_that_is_not_free_then(demo: Tenant) -> None:
    await demo.calendar.block(datetime(2026, 11, 27, 17, 0, tzinfo=LONDON), 60)
    chat = Chat(demo)
    await _to_confirm(chat)
    assert await chat.say("actually Friday") == ["taken_time"]
    assert chat.state == "ask_time" and chat.slots["date"] == "2026-11-27" and "time" not in chat.slots
    assert chat.slots["name"] == "John"
    assert await chat.press("18:00") == ["confirm"]


async def test_no_at_confirm_asks_what_to_change(demo: Tenant) -> None:
    chat = Chat(demo)
    await _to_confirm(chat)
    assert await chat.say("no") == ["change_what"]
    assert chat.labels == ["Service", "Day", "Time", "Name", "Phone", "Start over"]
    assert await chat.press("Time") == ["ask_time"]
    assert chat.labels == [f"{h}:00" for h in range(10, 20)]  # the whole day, on the hour
    assert await chat.say("2") == ["confirm"]  # the second button
    assert chat.slots["time"] == "11:00"


async def test_slot_taken_between_offer_and_booking(demo: Tenant) -> None:
    chat = Chat(demo)
    await _to_confirm(chat)
    await demo.calendar.block(datetime(2026, 11, 24, 17, 0, tzinfo=LONDON), 60)  # someone else was faster
    assert await chat.say("yes") == ["taken_time"]
    assert chat.state == "ask_time"
    assert {"service", "date", "name", "phone"} <= set(chat.slots) and "time" not in chat.slots
    assert chat.labels[:2] == ["16:00", "18:00"]
    assert await chat.press("18:00") == ["confirm"]
    assert await chat.say("yes") == ["booked"]


async def test_backend_failure_stays_at_confirm_and_can_retry(demo: Tenant) -> None:
    chat = Chat(demo)
    await _to_confirm(chat)
    result = await demo.engine.step(chat.session, UserInput(text="yes"), NOW, demo.calendar)
    assert chat.state == "booking" and not result.replies
    failed = await demo.engine.resolve(chat.session, EffectOutcome(effect="book", ok=False, reason="failed"),
                                       NOW, demo.calendar)  # fmt: skip
    assert [r.key for r in failed.replies] == ["book_failed"] and chat.state == "confirm"
    chat.replies = list(failed.replies)
    assert await chat.press("Yes") == ["booked"]


async def test_a_message_while_booking_is_in_flight_resends_the_same_booking(demo: Tenant) -> None:
    chat = Chat(demo)
    await _to_confirm(chat)
    first = await demo.engine.step(chat.session, UserInput(text="yes"), NOW, demo.calendar)
    again = await demo.engine.step(chat.session, UserInput(text="hello?"), NOW, demo.calendar)
    assert first.effects == again.effects and any(isinstance(e, BookSlot) for e in again.effects)


async def test_email_is_kept_when_given_and_asked_when_required(demo: Tenant, demo_configs: dict[str, TenantConfig],
                                                                database: AsyncEngine) -> None:  # fmt: skip
    chat = Chat(demo)
    await chat.say("haircut tomorrow at 5pm, I'm John, john@example.com")
    assert chat.slots["email"] == "john@example.com"
    profile = demo.profile
    strict = Engine(builtin_template("booking"), profile, slot_overrides={"email": (True, None)})
    chat = Chat(_tenant(database, demo_configs["demo"], "demo", strict))
    await chat.say("haircut tomorrow at 5pm, I'm John")
    assert await chat.say(PHONE) == ["ask_email"]
    assert await chat.say("john@") == ["invalid_email"]
    assert await chat.say("john@example.com") == ["confirm"]


# --- buttons --------------------------------------------------------------------------------------------------


async def test_buttons_press_by_value_number_or_label(demo: Tenant) -> None:
    chat = Chat(demo)
    await chat.say("hi")
    assert await chat.say("2") == ["ask_date"] and chat.slots["service"] == "manicure"
    assert await chat.say("tue 24 nov") == ["ask_time"] and chat.slots["date"] == "2026-11-24"
    assert await chat.say(button="svc:colouring") == ["ask_time"] and chat.slots["service"] == "colouring"
    assert await chat.say("42") == ["retry_time"]  # no 42nd button, and not a time
    assert chat.session.attempts == {"time": 1}


# --- global intents -------------------------------------------------------------------------------------------


async def test_start_over_and_stop(demo: Tenant) -> None:
    chat = Chat(demo)
    await chat.say("haircut tomorrow at 5pm")
    assert await chat.say("start over") == ["ask_service"]
    assert chat.slots == {}
    await chat.say("manicure friday")
    assert await chat.say("stop") == ["goodbye"]
    assert chat.state == "idle" and chat.slots == {}
    assert await chat.say("/start") == ["ask_service"]


async def test_first_start_command_greets(demo: Tenant) -> None:
    chat = Chat(demo)
    assert await chat.say("/start") == ["greeting", "ask_service"]


async def test_cancel_at_the_booking_confirmation_means_do_not_book(demo: Tenant) -> None:
    chat = Chat(demo)
    await chat.book_existing("2026-11-26T11:00")
    await _to_confirm(chat)
    assert await chat.say("cancel") == ["goodbye"]
    assert await chat.say("haircut friday at 5pm, I'm John") == ["ask_phone"]
    await chat.say(PHONE)
    assert await chat.say("cancel the booking") == ["goodbye"]
    assert chat.state == "idle" and len(await demo.calendar.active_bookings()) == 1


async def test_help_and_gibberish(demo: Tenant) -> None:
    chat = Chat(demo)
    assert await chat.say("qwrtz blorp") == ["help"]
    assert chat.state == "idle"
    assert "Book" in chat.labels
    await chat.say("haircut")
    assert await chat.say("help") == ["help", "ask_date"]
    assert chat.state == "ask_date" and chat.session.attempts == {}
    assert await chat.say("hello") == ["ask_date"]  # a greeting mid-flow just re-asks


async def test_three_failed_phone_attempts_hand_off(demo: Tenant) -> None:
    chat = Chat(demo)
    await chat.say("haircut tomorrow at 5pm, I'm John")
    assert await chat.say("12345") == ["invalid_phone"]
    assert await chat.say("no idea") == ["invalid_phone"]
    assert chat.session.attempts == {"phone": 2}
    assert await chat.say("dunno") == ["too_many_attempts_noted"]  # the demo notifies nobody: no promise
    assert chat.effects == [Handoff(reason="attempts:phone")]
    assert chat.state == "handoff"
    assert await chat.say("hm") == ["handoff_wait_noted"]
    assert await chat.say(PHONE) == ["handoff_wait_noted"]  # the bot stays out of a person's conversation
    chat.now += timedelta(minutes=demo.profile.handoff_quiet_minutes)
    assert await chat.say(PHONE) == ["confirm"]  # quiet long enough: the bot is back, the booking goes on


async def test_a_successful_fill_resets_the_attempts(demo: Tenant) -> None:
    chat = Chat(demo)
    await chat.say("haircut tomorrow at 5pm, I'm John")
    await chat.say("12345")
    await chat.say("abc")
    assert await chat.say(PHONE) == ["confirm"]
    assert chat.session.attempts == {}


async def test_asking_for_a_human(demo: Tenant) -> None:
    chat = Chat(demo)
    await chat.say("haircut")
    assert await chat.say("can I talk to an operator?") == ["handoff_noted"]
    assert chat.effects == [Handoff(reason="requested")] and chat.state == "handoff"


async def test_my_booking(demo: Tenant) -> None:
    chat = Chat(demo)
    assert await chat.say("what is my booking?") == ["no_bookings"]
    assert chat.state == "idle"
    await chat.book_existing("2026-11-25T11:00")
    assert await chat.say("my booking") == ["my_bookings"]
    assert "Haircut, Wed 25 Nov at 11:00" in chat.text
    await chat.say("manicure")
    assert await chat.say("my bookings") == ["my_bookings", "ask_date"]  # the flow goes on
    assert chat.state == "ask_date"


async def test_cancel_with_no_one_or_several_bookings(demo: Tenant) -> None:
    chat = Chat(demo)
    assert await chat.say("cancel my booking") == ["no_bookings"]
    assert chat.state == "idle"
    first = await chat.book_existing("2026-11-25T11:00")
    assert await chat.say("cancel my booking") == ["cancel_confirm"]
    assert chat.session.booking_id == first and "Wed 25 Nov at 11:00" in chat.text
    assert await chat.say("yes") == ["cancelled"]
    assert await demo.calendar.active_bookings() == []
    await chat.book_existing("2026-11-26T11:00")
    await chat.book_existing("2026-11-27T12:00", service="manicure")
    assert await chat.say("I need to cancel my appointment") == ["cancel_pick"]
    assert chat.labels == ["Haircut, Thu 26 Nov at 11:00", "Manicure, Fri 27 Nov at 12:00"]
    assert await chat.say("2") == ["cancel_confirm"]
    assert await chat.say("no") == ["cancel_kept"]
    assert chat.state == "idle" and len(await demo.calendar.active_bookings()) == 2


async def test_reschedule(demo: Tenant) -> None:
    chat = Chat(demo)
    assert await chat.say("reschedule") == ["no_bookings"]
    booking = await chat.book_existing("2026-11-24T11:00", service="manicure")
    assert await chat.say("can I reschedule to Friday?") == ["reschedule_time"]
    assert chat.slots["date"] == "2026-11-27" and chat.labels[0] == "10:00"
    assert await chat.say("6pm") == ["reschedule_confirm"]
    assert "from Tue 24 Nov at 11:00 to Fri 27 Nov at 18:00" in chat.text
    assert await chat.say("yes") == ["rescheduled"]
    [moved] = await demo.calendar.active_bookings()
    assert (moved.id, moved.start) == (booking, datetime(2026, 11, 27, 18, 0, tzinfo=LONDON))


async def test_reschedule_picks_among_several_then_asks_date_and_time(demo: Tenant) -> None:
    chat = Chat(demo)
    await chat.book_existing("2026-11-24T11:00")
    await chat.book_existing("2026-11-25T11:00")
    assert await chat.say("move my booking") == ["reschedule_pick"]
    assert await chat.press("Haircut, Wed 25 Nov at 11:00") == ["reschedule_date"]
    assert await chat.say("on Sunday") == ["closed_date"]
    assert await chat.press("Mon 30 Nov") == ["reschedule_time"]
    assert await chat.press("10:00") == ["reschedule_confirm"]
    assert await chat.say("no") == ["change_what"]
    assert chat.labels == ["Day", "Time", "Keep my booking"]
    assert await chat.press("Keep my booking") == ["goodbye"]


# --- Russian --------------------------------------------------------------------------------------------------


async def test_russian_happy_path(demo_ru: Tenant) -> None:
    chat = Chat(demo_ru)
    assert await chat.say("Здравствуйте") == ["greeting", "ask_service"]
    assert chat.labels == ["Стрижка", "Маникюр", "Окрашивание"]
    assert await chat.say("стрижка завтра в 17:00") == ["ask_name"]
    assert "вт, 24 ноября в 17:00" in chat.text
    assert await chat.say("Иван") == ["ask_phone"]
    assert await chat.say("+7 912 345-67-89") == ["confirm"]
    assert chat.labels == ["Да", "Нет"]
    assert await chat.say("да") == ["booked"]
    [booking] = await demo_ru.calendar.active_bookings()
    assert booking.start == datetime(2026, 11, 24, 17, 0, tzinfo=ZoneInfo("Europe/Moscow"))
    assert await chat.say("отменить запись") == ["cancel_confirm"]
    assert await chat.say("в воскресенье") == ["cancel_confirm"]  # not a yes or no: asked again


# --- configuration --------------------------------------------------------------------------------------------


def test_tenant_overrides_are_checked_when_the_engine_is_built(demo: Tenant) -> None:
    template = builtin_template("booking")
    bad_text = demo.profile.model_copy(update={"texts": {"ask_name": "Name for {servise}?", "nope": "x"}})
    with pytest.raises(TemplateError) as info:
        Engine(template, bad_text)
    messages = str(info.value)
    assert "unknown placeholder {servise}" in messages and "unknown text 'nope'" in messages
    with pytest.raises(TemplateError, match="unknown validator 'psychic'"):
        Engine(template, demo.profile, slot_overrides={"phone": (None, ["psychic"])})
    with pytest.raises(TemplateError, match="unknown slot 'shoe_size'"):
        Engine(template, demo.profile, slot_overrides={"shoe_size": (True, None)})


async def test_tenant_text_override_is_used(demo: Tenant) -> None:
    profile = demo.profile.model_copy(update={"texts": {"ask_service": "What shall we do for you today?"}})
    engine = Engine(builtin_template("booking"), profile)
    assert engine.text("ask_service") == "What shall we do for you today?"
    assert engine.text("ask_date", service="Haircut") == "Which day would you like to come for haircut?"
    assert engine.text("ask_name", service="Hair colouring", date="Fri", time="17:00").startswith("Hair colouring, ")
    assert engine.text("ask_date", service="SPA") == "Which day would you like to come for SPA?"  # capitals stay


async def test_a_session_from_an_older_template_starts_afresh(demo: Tenant) -> None:
    chat = Chat(demo)
    chat.session.state = "some_removed_state"
    assert await chat.say("haircut tomorrow at 5pm") == ["ask_name"]


async def test_the_clock_moves_on(demo: Tenant) -> None:
    chat = Chat(demo, now=NOW + timedelta(hours=9, minutes=10))  # 18:10 in London
    assert await chat.say("haircut today") == ["ask_time"]
    assert chat.labels == ["18:30", "19:00"]
