"""Replay conversation fixtures (DESIGN section 6) through the real pipeline and check what they expect.

Each fixture runs under a fresh alias of its tenant (``demo~1a2b3c4d``): every Redis key and table row carries
the tenant, so the alias starts with an empty calendar and no sessions, on whatever storage is configured, and
is purged afterwards.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from bot.pipeline import Pipeline, Turn
from bot.runtime import Runtime, Tenant
from channels.base import ChannelName, InboundMessage, MediaRef

_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Expect(_Strict):
    reply_contains: list[str] = Field(default_factory=list)
    reply_key: str | None = None
    state: str | None = None
    slots: dict[str, str] = Field(default_factory=dict)
    bookings: list[dict[str, str]] | None = None


class Step(_Strict):
    user: str | None = None
    press: str | None = None
    press_index: int | None = None
    voice: str | None = None  # an audio file, transcribed (relative to the fixture's directory or a parent)
    heard: str | None = None  # with ``voice``: the transcript to use when the file is not there (exports)
    contact: str | None = None  # a shared contact's phone number
    wait: str | None = None
    expect: Expect | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        actions = [
            a for a in ("user", "press", "press_index", "voice", "contact", "wait") if getattr(self, a) is not None
        ]
        if len(actions) != 1:
            raise ValueError(f"a turn needs exactly one of user/press/press_index/voice/contact/wait, got {actions}")
        if self.heard is not None and self.voice is None:
            raise ValueError("heard: goes with a voice: turn")
        if self.wait is not None and not _DURATION.match(self.wait):
            raise ValueError(f"wait: {self.wait!r} is not a duration like 30m, 2h, 1d")
        return self


class Busy(_Strict):
    start: str
    minutes: int = Field(gt=0)


class CalendarState(_Strict):
    busy: list[Busy] = Field(default_factory=list)


class Fixture(_Strict):
    tenant: str
    channel: ChannelName = "terminal"
    now: datetime
    description: str | None = None
    # Known not to pass yet, and why: reported as pending (not failed) while it fails, as a failure once it
    # passes (so the marker cannot outlive the fix).
    pending: str | None = None
    calendar: CalendarState = Field(default_factory=CalendarState)
    turns: list[Step] = Field(min_length=1)
    expect_end: Expect | None = None


@dataclass(frozen=True)
class Observation:
    """What a turn (or the whole conversation, at its end) actually did."""

    replies: list[str]  # each reply's text followed by its button labels: what the customer sees
    reply_keys: list[str]
    state: str | None
    slots: dict[str, str]
    bookings: list[dict[str, str]]


@dataclass
class Result:
    path: Path
    failures: list[str] = field(default_factory=list)
    observed: list[Observation] = field(default_factory=list)  # what each turn did (for --update)
    observed_end: Observation | None = None
    pending: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def verdict(self) -> str:
        """``passed``, ``failed``, ``pending`` (a fixture marked pending that fails) or ``fixed`` (marked
        pending but passing: its marker must go)."""
        if self.pending is None:
            return "passed" if self.passed else "failed"
        return "fixed" if self.passed else "pending"


def load_fixture(path: Path) -> Fixture:
    try:
        # pure: the YAML 1.2 parser that wrote the fixture (ruamel's C parser rejects `{start: 2026-11-24T14:00}`)
        data = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
        return Fixture.model_validate(data)
    except (OSError, YAMLError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: {where}: {first['msg']}") from exc


# Puts a fixture's ``calendar:`` state into the tenant's calendar; the default blocks it in the backend. A
# backend that cannot block time through the bot (cal.com) is prepared by its own (a test double's) setup.
CalendarSetup = Callable[[Fixture, Tenant], Awaitable[None]]


async def block_busy(fixture: Fixture, tenant: Tenant) -> None:
    for busy in fixture.calendar.busy:
        await tenant.calendar.block(local_time(busy.start, tenant), busy.minutes)


def local_time(text: str, tenant: Tenant) -> datetime:
    """A fixture's time; without an offset it is in the tenant's timezone."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=tenant.profile.tz)


class Replayer:
    def __init__(self, runtime: Runtime, *, calendar_setup: CalendarSetup = block_busy) -> None:
        self.rt = runtime
        self.pipeline = Pipeline(runtime, media=_read_voice)
        self.calendar_setup = calendar_setup

    async def run(self, path: Path) -> Result:
        result = Result(path)
        try:
            fixture = load_fixture(path)
        except ValueError as exc:
            result.failures.append(str(exc))
            return result
        result.pending = fixture.pending
        base = self.rt.tenant(fixture.tenant)
        tenant = self.rt.add_tenant(f"{fixture.tenant}~{uuid.uuid4().hex[:8]}", base.config, alias_of=base.id)
        try:
            await self.calendar_setup(fixture, tenant)
            await _Conversation(self.pipeline, tenant, fixture, result).play()
        finally:
            await self.rt.drop_tenant(tenant.id)
        return result


class _Conversation:
    """One fixture being played: the clock, the last reply's buttons and the checks."""

    def __init__(self, pipeline: Pipeline, tenant: Tenant, fixture: Fixture, result: Result) -> None:
        self.pipeline = pipeline
        self.home = result.path.resolve().parent  # the fixture's directory: voice files are found from there
        self.tenant = tenant
        self.fixture = fixture
        self.result = result
        self.now = fixture.now
        self.user = f"replay-{uuid.uuid4().hex[:8]}"
        self.last: Turn | None = None
        self.counter = 0

    async def play(self) -> None:
        for number, step in enumerate(self.fixture.turns, start=1):
            if step.wait is not None:
                amount, unit = _DURATION.match(step.wait).groups()  # type: ignore[union-attr]
                self.now += timedelta(**{_UNITS[unit]: int(amount)})
                continue
            try:
                turn = await self.pipeline.handle(self._message(step), self.now)
            except LookupError as exc:
                self.result.failures.append(f"turn {number}: {exc}")
                return
            self.last = turn
            observed = await self._observe(turn)
            self.result.observed.append(observed)
            if step.expect is not None:
                self._check(f"turn {number}", step.expect, observed)
        end = await self._observe(self.last)
        self.result.observed_end = end
        if self.fixture.expect_end is not None:
            self._check("end", self.fixture.expect_end, end)

    def _message(self, step: Step) -> InboundMessage:
        self.counter += 1
        common = {
            "tenant": self.tenant.id,
            "channel": self.fixture.channel,
            "user_id": self.user,
            "event_id": f"{self.user}-{self.counter}",
            "sent_at": self.now,
        }
        if step.voice is not None:
            return self._voice(step.voice, step.heard, common)
        if step.contact is not None:
            return InboundMessage(**common, phone=step.contact)
        if step.user is not None:
            return InboundMessage(**common, text=step.user)
        return InboundMessage(**common, button=self._button(step))

    def _voice(self, voice: str, heard: str | None, common: dict[str, Any]) -> InboundMessage:
        """A voice note: the file (its path is the media reference, read by :func:`_read_voice`), or the
        transcript an exported fixture recorded (a provider's media id is no file here)."""
        for base in (self.home, *self.home.parents):
            if (base / voice).is_file():
                return InboundMessage(**common, voice=MediaRef(id=str(base / voice), mime="audio/ogg"))
        if heard is not None:
            return InboundMessage(**common, text=heard, voice=MediaRef(id=voice))
        raise LookupError(f"voice file {voice!r} not found from {self.home} (and no heard: transcript)")

    def _button(self, step: Step) -> str:
        buttons = [b for r in (self.last.replies if self.last else []) for b in r.buttons]
        if step.press_index is not None:
            if not 0 <= step.press_index < len(buttons):
                raise LookupError(f"press_index {step.press_index}: the last reply has {len(buttons)} buttons")
            return buttons[step.press_index].value
        for button in buttons:
            if button.label == step.press:
                return button.value
        labels = ", ".join(repr(b.label) for b in buttons) or "none"
        raise LookupError(f"press {step.press!r}: no such button in the last reply (buttons: {labels})")

    async def _observe(self, turn: Turn | None) -> Observation:
        bookings = await self.tenant.calendar.active_bookings()
        return Observation(
            replies=[" | ".join([r.text, *(b.label for b in r.buttons)]) for r in turn.replies] if turn else [],
            reply_keys=[r.key for r in turn.replies] if turn else [],
            state=turn.session.state if turn else None,
            slots=dict(turn.session.slots) if turn else {},
            bookings=[
                {"service": b.service, "start": b.start.strftime("%Y-%m-%dT%H:%M"), "name": b.name, "phone": b.phone}
                for b in bookings
            ],
        )

    def _check(self, where: str, want: Expect, got: Observation) -> None:
        fail = self.result.failures.append
        text = "\n".join(got.replies)
        for needle in want.reply_contains:
            if needle.casefold() not in text.casefold():
                fail(f"{where}: reply does not contain {needle!r}; replies were: {text!r}")
        if want.reply_key is not None and want.reply_key not in got.reply_keys:
            fail(f"{where}: reply keys {got.reply_keys}, expected {want.reply_key!r}")
        if want.state is not None and want.state != got.state:
            fail(f"{where}: state {got.state!r}, expected {want.state!r}")
        for key, value in want.slots.items():
            if got.slots.get(key) != str(value):
                fail(f"{where}: slot {key}={got.slots.get(key)!r}, expected {value!r}")
        if want.bookings is not None:
            self._check_bookings(where, want.bookings, got.bookings)

    def _check_bookings(self, where: str, want: list[dict[str, str]], got: list[dict[str, str]]) -> None:
        matches = len(want) == len(got) and all(
            all(str(g.get(k)) == str(v) for k, v in w.items()) for w, g in zip(want, got, strict=True)
        )
        if not matches:
            self.result.failures.append(f"{where}: bookings {got}, expected {want}")




async def _read_voice(msg: InboundMessage) -> bytes:
    assert msg.voice is not None
    return await asyncio.to_thread(Path(msg.voice.id).read_bytes)


def update_fixture(path: Path, result: Result) -> None:
    """Rewrite a fixture's expectations from what the run observed, keeping its comments and turn layout."""
    yaml = YAML()
    yaml.preserve_quotes = True
    doc: Any = yaml.load(path.read_text(encoding="utf-8"))
    observed = iter(result.observed)
    for step in doc["turns"]:
        if "wait" in step:
            continue
        got = next(observed, None)
        if got is not None and "expect" in step:
            _rewrite(step["expect"], got)
    if result.observed_end is not None and "expect_end" in doc:
        _rewrite(doc["expect_end"], result.observed_end)
    with path.open("w", encoding="utf-8") as out:
        yaml.dump(doc, out)


def _rewrite(expect: Any, got: Observation) -> None:
    """Refresh the keys a fixture already asserts on (meaning, not wording: reply_contains is left alone)."""
    if "state" in expect:
        expect["state"] = got.state
    if "reply_key" in expect and got.reply_keys:
        expect["reply_key"] = got.reply_keys[-1]
    if "slots" in expect:
        for key in list(expect["slots"]):
            expect["slots"][key] = got.slots.get(key)
    if "bookings" in expect:
        keys = {k for item in expect["bookings"] for k in item} or {"service", "start"}
        expect["bookings"] = [{k: b[k] for k in b if k in keys} for b in got.bookings]
