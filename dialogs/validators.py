"""Slot validators, referenced by name from templates and from tenant config overrides.

A validator looks at one candidate slot value and either accepts it (``None``) or names a *reason*. The
reply for a rejection is the template text ``<reason>_<slot>`` (``past_date``, ``taken_time``,
``invalid_phone`` ...), so every reason a validator can give must have a text for every slot it checks.

Validators that need another slot (``free_time`` needs the service and the date) accept the value while that
slot is unknown; the engine checks the time again once the date or service is filled or changed.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from types import MappingProxyType

from dialogs.extract.contacts import usable_phone
from dialogs.ports import CalendarPort, TenantProfile


@dataclass
class Context:
    """What validators (and the engine's offers) may read during one turn.

    Calendar reads are memoised for the turn: validating a time and then offering alternatives on the same
    day costs one backend call.
    """

    profile: TenantProfile
    now: datetime  # aware, in the tenant's timezone
    slots: Mapping[str, str]
    calendar: CalendarPort
    _free: dict[tuple[str, date, date], list[datetime]] = field(default_factory=dict)
    _open: dict[date, bool] = field(default_factory=dict)

    @property
    def today(self) -> date:
        return self.now.date()

    async def free_slots(self, service: str, day_from: date, day_to: date) -> list[datetime]:
        key = (service, day_from, day_to)
        if key not in self._free:
            self._free[key] = await self.calendar.free_slots(service, day_from, day_to, self.now)
        return self._free[key]

    async def is_open(self, day: date) -> bool:
        if day not in self._open:
            self._open[day] = await self.calendar.is_open(day)
        return self._open[day]


Check = Callable[[str, Context], Awaitable[str | None]]


@dataclass(frozen=True)
class Validator:
    checks: Mapping[str, Check]  # slot kind (extractor name) -> (value, context) -> rejection reason or None
    reasons: tuple[str, ...]  # every reason it may return

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self.checks)


def parse_date(value: str) -> date | None:
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def parse_time(value: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", value)
    return (int(match[1]), int(match[2])) if match else None


async def _known_service(value: str, ctx: Context) -> str | None:
    return None if ctx.profile.service(value) else "unknown"


async def _not_past_date(value: str, ctx: Context) -> str | None:
    day = parse_date(value)
    return "past" if day is None or day < ctx.today else None


async def _not_past_time(value: str, ctx: Context) -> str | None:
    hm, day = parse_time(value), parse_date(ctx.slots.get("date", ""))
    if hm is None:
        return "past"
    if day is None or day != ctx.today:
        return None
    return "past" if hm <= (ctx.now.hour, ctx.now.minute) else None


async def _within_horizon(value: str, ctx: Context) -> str | None:
    day = parse_date(value)
    return "too_far" if day is None or day > ctx.today + timedelta(days=ctx.profile.horizon_days) else None


async def _open_day(value: str, ctx: Context) -> str | None:
    day = parse_date(value)
    return "closed" if day is None or not await ctx.is_open(day) else None


async def _free_time(value: str, ctx: Context) -> str | None:
    service, day = ctx.slots.get("service"), parse_date(ctx.slots.get("date", ""))
    if service is None or day is None or ctx.profile.service(service) is None:
        return None
    hour, _, minute = value.partition(":")
    if not (hour.isdigit() and minute.isdigit()):
        return "taken"
    wanted = (int(hour), int(minute))
    free = await ctx.free_slots(service, day, day)  # aware, in the tenant's timezone (CalendarPort)
    return None if any((start.hour, start.minute) == wanted for start in free) else "taken"


async def _valid_phone(value: str, ctx: Context) -> str | None:
    import phonenumbers  # imported where it is used: see dialogs.extract.contacts.find_phone

    try:
        number = phonenumbers.parse(value, ctx.profile.default_region)
    except phonenumbers.NumberParseException:
        return "invalid"
    return None if usable_phone(number) else "invalid"


_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]{2,}")


async def _valid_email(value: str, ctx: Context) -> str | None:
    return None if _EMAIL.fullmatch(value) else "invalid"


_NAME = re.compile(r"[^\W\d_]+(?:[ '’.-]+[^\W\d_]+){0,4}\.?")


async def _name_like(value: str, ctx: Context) -> str | None:
    return None if len(value) <= 60 and _NAME.fullmatch(value.strip()) else "invalid"


VALIDATORS: Mapping[str, Validator] = MappingProxyType(
    {
        "known_service": Validator({"service": _known_service}, ("unknown",)),
        "not_past": Validator({"date": _not_past_date, "time": _not_past_time}, ("past",)),
        "within_horizon": Validator({"date": _within_horizon}, ("too_far",)),
        "open_day": Validator({"date": _open_day}, ("closed",)),
        "free_time": Validator({"time": _free_time}, ("taken",)),
        "valid_phone": Validator({"phone": _valid_phone}, ("invalid",)),
        "valid_email": Validator({"email": _valid_email}, ("invalid",)),
        "name_like": Validator({"name": _name_like}, ("invalid",)),
    }
)
