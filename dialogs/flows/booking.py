"""The booking flow: fill slots from what the customer says, validate them, offer real free dates and times,
and book (as an effect) after the confirmation.

Offers are real: times are the backend's free slots, nearest to what the customer asked first; dates are the
next days with free times. A rejected value (a taken time, a closed day, a past date) is answered with
alternatives, never with a dead end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, time, timedelta

from dialogs.flows.base import BUTTON_CAP, FlowBase, Rejection, Turn
from dialogs.model import BookSlot, Button, CancelBooking, Effect, Reply, RescheduleBooking, SyncCustomer
from dialogs.session import Session
from dialogs.validators import parse_date

DATE_BUTTONS = 5
SEARCH_DAYS = 14  # how far ahead free days are looked for
HINTS = ("time_after", "time_before")  # "after 6" / "before noon": bounds for the offered times


class BookingFlow(FlowBase):
    async def _fill(self, turn: Turn, found: Mapping[str, str]) -> None:
        s, state = turn.session, self._state(turn)
        flow = state.flow
        if not self.template.flows.get(flow):  # resting (or in a flow without slots): a new booking
            if s.booking_id is not None:  # the last flow finished; a handed-off booking continues
                self._reset(s)
            flow = "booking"
        rejections, filled = await self._apply(turn, self.template.flows[flow], found)
        if not filled and state.kind == "ask":
            await self._failed(turn, rejections)
        else:
            await self._advance(turn, flow, rejections)

    async def _apply(self, turn: Turn, order: Sequence[str], found: Mapping[str, str]) -> tuple[list[Rejection], bool]:
        """Validate and store the values found for ``order``; returns the rejections and whether anything
        was filled (a value repeated as it is counts as filled)."""
        s = turn.session
        filled = "time" in order and self._take_hints(s, found)
        changed: set[str] = set()
        rejections: list[Rejection] = []
        for slot in order:
            value = found.get(slot)
            if value is None:
                continue
            if s.slots.get(slot) == value:
                filled = True
            elif rejection := await self._validate(turn, slot, value):
                rejections.append(rejection)
            else:
                s.slots[slot], filled = value, True
                s.attempts.pop(slot, None)
                changed.add(slot)
                if slot == "time":
                    for hint in HINTS:
                        s.slots.pop(hint, None)
        recheck = changed & {"service", "date"} and "time" in s.slots and "time" not in changed and "time" in order
        if recheck and (rejection := await self._validate(turn, "time", s.slots["time"])):
            del s.slots["time"]  # no longer free on the new day / for the new service
            rejections.append(rejection)
        return rejections, filled

    @staticmethod
    def _take_hints(s: Session, found: Mapping[str, str]) -> bool:
        hints = {k: found[k] for k in HINTS if k in found}
        if not hints:
            return False
        for hint in HINTS:
            s.slots.pop(hint, None)
        s.slots.update(hints)
        if "time" not in found:
            s.slots.pop("time", None)  # "after 6" replaces the time chosen before
        return True

    async def _failed(self, turn: Turn, rejections: list[Rejection]) -> None:
        """The slot asked for was not filled: re-ask with a hint, or hand off after too many attempts."""
        s, state = turn.session, self._state(turn)
        slot = state.slot
        assert slot is not None
        s.attempts[slot] = s.attempts.get(slot, 0) + 1
        if s.attempts[slot] >= self.max_attempts:
            self._give_up(turn, slot)
        else:
            await self._advance(turn, state.flow, rejections, key=f"retry_{slot}")

    def _missing(self, s: Session, flow: str) -> str | None:
        return next((x for x in self.template.flows[flow] if self.slots[x].required and x not in s.slots), None)

    async def _advance(self, turn: Turn, flow: str, rejections: list[Rejection], key: str | None = None) -> None:
        """Ask for the first missing slot of ``flow`` (or confirm when none is missing), answering each
        rejection with its alternatives first."""
        s = turn.session
        times: list[str] = []
        note: Rejection | None = None
        while (missing := self._missing(s, flow)) == "time" and "date" in s.slots and "service" in s.slots:
            near = next((r.value for r in rejections if r.slot == "time"), None)
            times, note = await self._time_offer(turn, near)
            if times:
                break
            full = s.slots.pop("date")  # nothing free that day: offer other days instead
            rejections = [r for r in rejections if r.slot != "time"] + [Rejection("date", "full", full)]
        for rejection in rejections:
            if rejection.slot != missing:
                self._say(turn, await self._ask_reply(turn, rejection.slot, rejection.key, rejection))
        if missing is None:
            self._go(turn, "complete")
            self._say(turn, self._reply(self._prompt_key(turn), self._facts(turn), self._yes_no))
            return
        self._go(turn, f"need_{missing}")
        own = next((r for r in rejections if r.slot == missing), None if key else note)
        key = own.key if own else key or self._prompt_key(turn)
        self._say(turn, await self._ask_reply(turn, missing, key, own, times))

    async def _ask_reply(
        self, turn: Turn, slot: str, key: str, rejection: Rejection | None, times: Sequence[str] = ()
    ) -> Reply:
        facts = self._facts(turn, rejection)
        kind = self.slots[slot].extractor
        buttons: Sequence[Button] = ()
        if kind == "service":
            buttons = self._services
        elif kind == "date":
            days = await self._date_offer(turn, rejection)
            if not days:
                key, buttons = "no_dates", (self._button("button_human", "intent:human"),)
            else:
                buttons = [Button(label=self._date(d.isoformat()), value=f"date:{d.isoformat()}") for d in days]
        elif kind == "time":
            offered = times or (await self._time_offer(turn, rejection.value if rejection else None))[0]
            buttons = [Button(label=t, value=f"time:{t}") for t in offered]
        return self._reply(key, facts, buttons)

    async def _time_offer(self, turn: Turn, near: str | None) -> tuple[list[str], Rejection | None]:
        """Free start times on the chosen day, nearest to what was asked first (nothing asked: spread over the
        day). A bound that nothing meets ("after 6" on a day full after 18:00) gets the nearest times and a note
        (``nothing_after_time``)."""
        s = turn.session
        service, day = s.slots.get("service"), parse_date(s.slots.get("date", ""))
        if service is None or day is None:
            return [], None
        free = [_hhmm(start.astimezone(self._tz)) for start in await turn.ctx.free_slots(service, day, day)]
        after, before = s.slots.get("time_after"), s.slots.get("time_before")
        if near is not None or (after is None and before is None):
            return (_nearest(free, near) if near else _spread(free)), None
        inside = [t for t in free if (after is None or t >= after) and (before is None or t < before)]
        if inside:  # a window reads forwards; "before 3pm" alone offers the latest times before it first
            return (inside if after is not None else inside[::-1]), None
        return _outside(free, after, before)

    async def _date_offer(self, turn: Turn, rejection: Rejection | None) -> list[date]:
        """The next days with free times for the service (after a closed or full day: after that day)."""
        today = turn.ctx.today
        start = today
        if rejection and rejection.reason in ("closed", "full") and (day := parse_date(rejection.value)):
            start = max(today, day + timedelta(days=1))
        days = await self._free_days(turn, start)
        return days or (await self._free_days(turn, today) if start > today else [])

    async def _free_days(self, turn: Turn, start: date) -> list[date]:
        service = turn.session.slots.get("service")
        end = start + timedelta(days=SEARCH_DAYS - 1)
        if service is None:  # not chosen yet: open days
            candidates = [start + timedelta(days=n) for n in range(SEARCH_DAYS)]
            return [d for d in candidates if await turn.ctx.is_open(d)][:DATE_BUTTONS]
        days: list[date] = []
        for moment in await turn.ctx.free_slots(service, start, end):  # ascending: days come in order
            day = moment.astimezone(self._tz).date()
            if not days or days[-1] != day:
                if len(days) == DATE_BUTTONS:
                    break
                days.append(day)
        return days

    def _effects(self, turn: Turn) -> list[Effect]:
        """The effect of the current flow's confirmation (also re-sent when an outcome never came back)."""
        s, flow = turn.session, self._state(turn).flow
        if flow == "cancel" and s.booking_id:
            return [CancelBooking(booking_id=s.booking_id)]
        if flow == "reschedule" and s.booking_id:
            return [RescheduleBooking(booking_id=s.booking_id, start=self._start(s))]
        service = self.profile.service(s.slots["service"])
        assert service is not None, "validated when filled"
        name, phone, email = s.slots["name"], s.slots["phone"], s.slots.get("email")
        start = self._start(s)
        return [
            SyncCustomer(name=name, phone=phone, email=email),
            BookSlot(
                key=f"{s.conversation}|{service.id}|{start.isoformat()}",
                service=service.id,
                start=start,
                minutes=service.minutes,
                name=name,
                phone=phone,
                email=email,
            ),
        ]

    def _start(self, s: Session) -> datetime:
        hour, minute = map(int, s.slots["time"].split(":"))
        return datetime.combine(date.fromisoformat(s.slots["date"]), time(hour, minute), tzinfo=self._tz)


def _nearest(times: Sequence[str], wanted: str) -> list[str]:
    """``times`` ordered by distance from ``wanted`` (earlier first on a tie)."""

    def minutes(hm: str) -> int:
        return int(hm[:2]) * 60 + int(hm[3:5])

    target = minutes(wanted) if len(wanted) == 5 else 0
    return sorted(times, key=lambda t: (abs(minutes(t) - target), t))


def _outside(free: Sequence[str], after: str | None, before: str | None) -> tuple[list[str], Rejection]:
    """Nothing free in the window asked for: the nearest free times, and a note saying so."""
    if after is not None and before is not None and after != "00:00":
        return _nearest(free, after), Rejection("time", "nothing_between", f"{after}–{before}")
    if before is not None:
        return _nearest(free, before), Rejection("time", "nothing_before", before)
    assert after is not None
    return _nearest(free, after), Rejection("time", "nothing_after", after)


def _spread(times: Sequence[str]) -> list[str]:
    """Nothing asked: times spread evenly over the whole day (morning, afternoon and evening), the free
    times on the hour first (easier to read), the first and last of them included."""
    hourly = [t for t in times if t.endswith(":00")]
    pool = hourly if len(hourly) >= BUTTON_CAP // 2 else list(times)
    if len(pool) <= BUTTON_CAP:
        return pool
    last = len(pool) - 1
    return [pool[round(i * last / (BUTTON_CAP - 1))] for i in range(BUTTON_CAP)]


def _hhmm(moment: datetime) -> str:
    """``HH:MM`` (what strftime("%H:%M") gives, at a fraction of its cost: it runs for every offered time)."""
    return f"{moment.hour:02d}:{moment.minute:02d}"
