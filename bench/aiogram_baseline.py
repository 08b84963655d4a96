"""Baseline for `bench/turns.py`: the same 6-turn booking dialog as a hand-written aiogram 3 bot.

What is measured is aiogram's own work per update and nothing else: `Dispatcher.feed_update` (what aiogram's
webhook handler calls) -> router and state filters -> FSM context over a real `RedisStorage` -> handler ->
`message.answer(...)` through the `Bot` -> an in-process `BaseSession` that answers the Bot API at once.

The comparison is conservative, i.e. it favours aiogram:
- updates are built (parsed and mounted on the bot) before the clock starts, and the in-process session skips
  request serialization and response parsing;
- free times come from a trivial in-memory calendar (`MemoryCalendar`), while bookingbot reads its calendar
  from SQL and writes every message to the message log on each turn;
- events isolation is aiogram's default in-process lock, not `RedisEventIsolation`, although bookingbot keeps
  per-conversation order across processes;
- phones are checked by a regex, not by `phonenumbers`.

The dialog (frozen clock `NOW`, a Monday):
    hi -> asks service (buttons) | haircut -> asks date | tomorrow -> free times as an inline keyboard |
    17:00 -> asks name | John -> asks phone | +447700900123 -> summary with Yes/No buttons (state `confirm`).
The 17:00 turn is typed, which is what bookingbot's channels do when a button is pressed by its label.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import re
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from typing import Any, cast
from zoneinfo import ZoneInfo

from aiogram import Bot, Dispatcher, F, Router
from aiogram.client.session.base import BaseSession
from aiogram.dispatcher.event.bases import UNHANDLED
from aiogram.filters import StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.fsm.storage.base import DefaultKeyBuilder, StorageKey
from aiogram.fsm.storage.redis import RedisStorage
from aiogram.methods import SendMessage, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import Chat, InlineKeyboardButton, InlineKeyboardMarkup, Message, Update

TURNS: list[str] = ["hi", "haircut", "tomorrow", "17:00", "John", "+447700900123"]
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
TIMEZONE = ZoneInfo("Europe/London")
BOT_TOKEN = "42:bench-aiogram-baseline"
SESSION_TTL = timedelta(days=1)
EXPECTED_DATA: dict[str, Any] = {
    "service": "haircut",
    "date": "2026-11-24",
    "time": "17:00",
    "name": "John",
    "phone": "+447700900123",
}
SERVICE_MINUTES = {"haircut": 60, "manicure": 45, "colouring": 120}
SERVICE_LABELS = {"haircut": "Haircut", "manicure": "Manicure", "colouring": "Hair colouring"}
_FIRST_CHAT_ID = 10_000_000
_PHONE = re.compile(r"^\+?\d[\d\s()-]{6,18}\d$")


class BaselineDialogError(RuntimeError):
    """The aiogram baseline did not run the dialog to the end: its numbers would be meaningless."""


class Booking(StatesGroup):
    service = State()
    date = State()
    time = State()
    name = State()
    phone = State()
    confirm = State()


@dataclass(frozen=True)
class MemoryCalendar:
    """The demo salon's calendar kept in memory: Mon-Sat 10:00-20:00, a slot every 30 minutes."""

    durations: dict[str, int] = field(default_factory=SERVICE_MINUTES.copy)
    labels: dict[str, str] = field(default_factory=SERVICE_LABELS.copy)
    opens: clock_time = clock_time(10, 0)
    closes: clock_time = clock_time(20, 0)
    step_minutes: int = 30
    busy: dict[date, list[tuple[clock_time, clock_time]]] = field(default_factory=dict)

    def find_service(self, text: str) -> str | None:
        wanted = text.strip().casefold()
        return next((sid for sid, label in self.labels.items() if wanted in (sid, label.casefold())), None)

    def free_times(self, service: str, day: date) -> list[str]:
        if day.weekday() == 6:
            return []
        length = timedelta(minutes=self.durations[service])
        start = datetime.combine(day, self.opens)
        last = datetime.combine(day, self.closes) - length
        taken = self.busy.get(day, [])
        free: list[str] = []
        while start <= last:
            end = (start + length).time()
            if all(end <= b_start or start.time() >= b_end for b_start, b_end in taken):
                free.append(start.strftime("%H:%M"))
            start += timedelta(minutes=self.step_minutes)
        return free


class InProcessSession(BaseSession):
    """Answers the Bot API in-process and keeps what was sent, per chat, for the dialog check."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: defaultdict[int, list[Message]] = defaultdict(list)
        self._message_ids = itertools.count(1)

    async def make_request(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        timeout: int | None = None,  # noqa: ASYNC109 (aiogram's signature)
    ) -> TelegramType:
        if not isinstance(method, SendMessage):
            raise NotImplementedError(f"the in-process Bot API does not answer {type(method).__name__}")
        markup = method.reply_markup if isinstance(method.reply_markup, InlineKeyboardMarkup) else None
        chat_id = int(method.chat_id)
        message = Message(
            message_id=next(self._message_ids),
            date=NOW,
            chat=Chat(id=chat_id, type="private"),
            text=method.text,
            reply_markup=markup,
        )
        self.sent[chat_id].append(message)
        return cast(TelegramType, message)

    async def close(self) -> None:
        """Nothing to close: no connections are opened."""

    def stream_content(
        self,
        url: str,
        headers: dict[str, Any] | None = None,
        timeout: int = 30,
        chunk_size: int = 65536,
        raise_for_status: bool = True,
    ) -> AsyncGenerator[bytes, None]:
        raise NotImplementedError("the in-process Bot API serves no files")


def _keyboard(labels: list[str], prefix: str, per_row: int) -> InlineKeyboardMarkup:
    buttons = [InlineKeyboardButton(text=label, callback_data=f"{prefix}:{label}") for label in labels]
    rows = [buttons[i : i + per_row] for i in range(0, len(buttons), per_row)]
    return InlineKeyboardMarkup(inline_keyboard=rows)


def _parse_day(text: str, today: date) -> date | None:
    words = {"today": 0, "tomorrow": 1}
    word = text.strip().casefold()
    if word in words:
        return today + timedelta(days=words[word])
    try:
        return date.fromisoformat(word)
    except ValueError:
        return None


def build_router(calendar: MemoryCalendar) -> Router:
    """The booking dialog as idiomatic aiogram handlers: one per FSM state."""
    router = Router(name="booking")
    services = _keyboard(list(calendar.labels.values()), "service", per_row=1)

    @router.message(Booking.service, F.text)
    async def on_service(message: Message, state: FSMContext) -> None:
        service = calendar.find_service(message.text or "")
        if service is None:
            await message.answer("Sorry, which service?", reply_markup=services)
            return
        await state.update_data(service=service)
        await state.set_state(Booking.date)
        await message.answer(f"{calendar.labels[service]}: which day would suit you?")

    @router.message(Booking.date, F.text)
    async def on_date(message: Message, state: FSMContext) -> None:
        day = _parse_day(message.text or "", message.date.astimezone(TIMEZONE).date())
        service = (await state.get_data())["service"]
        free = [] if day is None else calendar.free_times(service, day)
        if day is None or not free:
            await message.answer("We have no free time then. Another day?")
            return
        await state.update_data(date=day.isoformat())
        await state.set_state(Booking.time)
        await message.answer(f"Free times on {day:%A %d %B}:", reply_markup=_keyboard(free, "time", 4))

    @router.message(Booking.time, F.text.regexp(r"^\d{1,2}:\d{2}$"))
    async def on_time(message: Message, state: FSMContext) -> None:
        data = await state.get_data()
        wanted = (message.text or "").zfill(5)
        free = calendar.free_times(data["service"], date.fromisoformat(data["date"]))
        if wanted not in free:
            await message.answer("That time is taken. Pick another:", reply_markup=_keyboard(free, "time", 4))
            return
        await state.update_data(time=wanted)
        await state.set_state(Booking.name)
        await message.answer("What is your name?")

    @router.message(Booking.name, F.text)
    async def on_name(message: Message, state: FSMContext) -> None:
        await state.update_data(name=(message.text or "").strip())
        await state.set_state(Booking.phone)
        await message.answer("Your phone number?")

    @router.message(Booking.phone, F.text.regexp(_PHONE))
    async def on_phone(message: Message, state: FSMContext) -> None:
        phone = "+" + re.sub(r"\D", "", message.text or "")
        data = await state.update_data(phone=phone)
        await state.set_state(Booking.confirm)
        summary = f"{calendar.labels[data['service']]} on {data['date']} at {data['time']} for {data['name']}"
        await message.answer(
            f"{summary}, phone {phone}. Book it?", reply_markup=_keyboard(["Yes", "No"], "ok", 2)
        )

    # Any text outside the dialog (a greeting) starts it.
    @router.message(StateFilter(None), F.text)
    async def on_start(message: Message, state: FSMContext) -> None:
        await state.set_state(Booking.service)
        await message.answer("Hello! Which service would you like?", reply_markup=services)

    return router


@dataclass
class AiogramRun:
    latencies: list[float]  # seconds, one per turn
    wall_seconds: float  # the timed conversations only: no setup, warm-up or cleanup


@dataclass
class _Harness:
    bot: Bot
    session: InProcessSession
    dispatcher: Dispatcher
    storage: RedisStorage
    update_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def update(self, chat_id: int, text: str) -> Update:
        """An update parsed and mounted on the bot, as aiogram's webhook handler builds it."""
        raw = {
            "update_id": next(self.update_ids),
            "message": {
                "message_id": next(self.update_ids),
                "date": int(NOW.timestamp()),
                "chat": {"id": chat_id, "type": "private"},
                "from": {"id": chat_id, "is_bot": False, "first_name": "John"},
                "text": text,
            },
        }
        return Update.model_validate(raw, context={"bot": self.bot})

    async def converse(self, chat_id: int, updates: list[Update]) -> list[float]:
        """Feed one conversation's updates in order; only `feed_update` is on the clock."""
        latencies: list[float] = []
        for update in updates:
            started = time.perf_counter()
            result = await self.dispatcher.feed_update(self.bot, update)
            latencies.append(time.perf_counter() - started)
            if result is UNHANDLED:
                text = update.message.text if update.message else None
                raise BaselineDialogError(f"chat {chat_id}: no handler took {text!r}")
        return latencies

    async def run_round(self, chat_ids: range) -> tuple[list[float], float]:
        """One round of concurrent conversations: their latencies and wall time, checked afterwards.

        Updates are built before and checks run after the clock, so no conversation's latency includes
        another one's parsing or checking.
        """
        updates = {chat_id: [self.update(chat_id, text) for text in TURNS] for chat_id in chat_ids}
        started = time.perf_counter()
        per_chat = await asyncio.gather(*(self.converse(c, u) for c, u in updates.items()))
        wall = time.perf_counter() - started
        for chat_id in chat_ids:
            await self.verify(chat_id)
        self.session.sent.clear()  # so later rounds' garbage collections do not scan this round's replies
        return list(itertools.chain.from_iterable(per_chat)), wall

    async def verify(self, chat_id: int) -> None:
        key = StorageKey(bot_id=self.bot.id, chat_id=chat_id, user_id=chat_id)
        state = await self.storage.get_state(key)
        data = await self.storage.get_data(key)
        replies = self.session.sent[chat_id]
        times = replies[2].reply_markup if len(replies) == len(TURNS) else None
        offered = {button.text for row in times.inline_keyboard for button in row} if times else set()
        if state != Booking.confirm.state or data != EXPECTED_DATA or "17:00" not in offered:
            raise BaselineDialogError(
                f"chat {chat_id}: ended in {state} with {data} after {len(replies)} replies"
            )


async def _delete_keys(storage: RedisStorage, prefix: str) -> None:
    keys = [key async for key in storage.redis.scan_iter(match=f"{prefix}:*", count=1000)]
    if keys:
        await storage.redis.delete(*keys)


async def measure_aiogram(
    conversations: int, redis_url: str = "redis://127.0.0.1:6379/0", rounds: int = 1
) -> AiogramRun:
    """Run `conversations` conversations at once, `rounds` times; each turn's latency and the timed wall time.

    Before the clock starts, one conversation warms aiogram up and the Redis pool gets `conversations`
    connections, so neither first-call costs nor connects are measured. Redis keys are deleted afterwards.
    """
    if conversations < 1 or rounds < 1:
        raise ValueError(f"conversations and rounds must be >= 1, got {conversations} and {rounds}")
    prefix = f"bench-aiogram-{uuid.uuid4().hex}"
    storage = RedisStorage.from_url(
        redis_url, key_builder=DefaultKeyBuilder(prefix=prefix), state_ttl=SESSION_TTL, data_ttl=SESSION_TTL
    )
    session = InProcessSession()
    dispatcher = Dispatcher(storage=storage)
    dispatcher.include_router(build_router(MemoryCalendar()))
    harness = _Harness(Bot(BOT_TOKEN, session=session), session, dispatcher, storage)
    try:
        await harness.run_round(range(_FIRST_CHAT_ID - 1, _FIRST_CHAT_ID))
        await asyncio.gather(*(storage.redis.ping() for _ in range(conversations)))
        latencies: list[float] = []
        wall = 0.0
        for round_ in range(rounds):
            first = _FIRST_CHAT_ID + round_ * conversations
            round_latencies, round_wall = await harness.run_round(range(first, first + conversations))
            latencies.extend(round_latencies)
            wall += round_wall
    finally:
        await _delete_keys(storage, prefix)
        await storage.close()
    return AiogramRun(latencies=latencies, wall_seconds=wall)


async def _main() -> None:
    # Importing aiogram's pydantic types makes each full garbage collection take ~120 ms, which would be most
    # of p99; freezing everything imported takes it out of collections (this favours the baseline).
    gc.collect()
    gc.freeze()
    for conversations, rounds in ((1, 100), (100, 5)):
        run = await measure_aiogram(conversations, rounds=rounds)
        cuts = statistics.quantiles(run.latencies, n=100, method="inclusive")
        print(
            f"aiogram concurrent={conversations:<3} turns={len(run.latencies):<4} "
            f"turns/s={len(run.latencies) / run.wall_seconds:8.1f} "
            f"p50_ms={cuts[49] * 1000:6.2f} p99_ms={cuts[98] * 1000:6.2f}"
        )


if __name__ == "__main__":
    asyncio.run(_main())
