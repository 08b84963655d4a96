"""The dialog engine: one customer message in, replies and effects out (DESIGN section 2).

:meth:`Engine.step` reads the message (a pressed button, an intent, slot values), fills and validates slots,
and moves the session through the template's machine: every state change is a trigger the template allows
from the current state (:class:`dialogs.machine.FlowMachine`). Writes never happen here: booking, cancelling
and rescheduling go out as effects, and :meth:`Engine.resolve` continues the dialog with their outcome.

Offers are real: times are the backend's free slots, nearest to what the customer asked first; dates are the
next days with free times. A rejected value (a taken time, a closed day, a past date) is answered with
alternatives, never with a dead end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from dialogs.exceptions import Problem, TemplateError
from dialogs.extract import ExtractContext, extract_all, extract_phone
from dialogs.loader import placeholders, text_problems, validator_problems
from dialogs.model import (
    BookSlot,
    Button,
    CancelBooking,
    Effect,
    EffectOutcome,
    Handoff,
    Reply,
    RescheduleBooking,
    StepResult,
    SyncCustomer,
    UserInput,
)
from dialogs.ports import BookingView, CalendarPort, TenantProfile
from dialogs.schema import INTENTS, RAW_INVALID, RESTING, SlotSpec, StateSpec, Template
from dialogs.session import Session
from dialogs.validators import VALIDATORS, Context, parse_date

BUTTON_CAP = 8  # buttons per message (channels degrade longer lists anyway)
DATE_BUTTONS = 5
SEARCH_DAYS = 14  # how far ahead free days are looked for
SLOT_BUTTONS = {"svc": "service", "date": "date", "time": "time"}  # button value prefix -> slot
HINTS = ("time_after", "time_before")  # "after 6" / "before noon": bounds for the offered times
REMINDER_PREFIX = "remind:"  # buttons under a reminder: remind:<confirm|reschedule|cancel>:<booking id>
HARD = frozenset({"human", "restart", "cancel_booking", "reschedule", "my_booking", "stop"})
SOFT = frozenset({"help", "greeting"})  # answered only when the message carries nothing else

SlotOverrides = Mapping[str, tuple[bool | None, list[str] | None]]


@dataclass(frozen=True)
class Rejection:
    """A slot value a validator refused; its reply is the text ``<reason>_<slot>`` plus alternatives."""

    slot: str
    reason: str
    value: str

    @property
    def key(self) -> str:
        return f"{self.reason}_{self.slot}"


@dataclass
class _Turn:
    """One call of step() or resolve(): the session being changed and what the turn says and does."""

    session: Session
    ctx: Context
    replies: list[Reply] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)

    def result(self) -> StepResult:
        self.session.offered = [b for reply in self.replies for b in reply.buttons]
        return StepResult(replies=tuple(self.replies), effects=tuple(self.effects))


def override_problems(template: Template, profile: TenantProfile, slot_overrides: SlotOverrides) -> list[str]:
    """What is wrong with a tenant's text and slot overrides for ``template`` (empty when nothing)."""
    problems: list[str] = []
    if profile.locale not in template.texts:
        problems.append(f"template {template.name!r} has no {profile.locale!r} texts")
    catalog = template.text_catalog()
    for key, text in profile.texts.items():
        if key not in catalog:
            problems.append(f"unknown text {key!r} in template {template.name!r}")
        else:
            problems += text_problems(key, text, catalog[key])
    for slot, (_, validators) in slot_overrides.items():
        if slot not in template.slots:
            problems.append(f"unknown slot {slot!r} in template {template.name!r}")
            continue
        for name in validators or ():
            problems += validator_problems(slot, template.slots[slot].extractor, name)
        for key in sorted(template.rejection_keys(slot, tuple(validators or ()))):
            if any(key not in texts for texts in template.texts.values()):
                problems.append(f"slot {slot!r}: its validators need a text {key!r}, which the template lacks")
    return problems


class Engine:
    def __init__(
        self,
        template: Template,
        profile: TenantProfile,
        *,
        max_attempts: int = 3,
        slot_overrides: SlotOverrides | None = None,
    ) -> None:
        overrides = slot_overrides or {}
        problems = override_problems(template, profile, overrides)
        if problems:
            raise TemplateError([Problem(f"tenant {profile.id}", 0, message) for message in problems])
        self.template = template
        self.profile = profile
        self.max_attempts = max_attempts
        self.slots = {name: _override(spec, overrides.get(name)) for name, spec in template.slots.items()}
        self._texts = {**template.texts[profile.locale], **profile.texts}
        self._fields = {key: tuple(placeholders(text)) for key, text in self._texts.items()}
        self._format = template.formats[profile.locale]
        self._tz = profile.tz
        self._yes_no = (self._button("button_yes", "yes"), self._button("button_no", "no"))
        self._services = tuple(Button(label=s.label, value=f"svc:{s.id}") for s in profile.services)
        self._book = (self._button("button_book", "intent:restart"),)
        self._manage = (
            self._button("button_reschedule", "intent:reschedule"),
            self._button("button_cancel_booking", "intent:cancel_booking"),
        )
        self._menu = (*self._book, self._button("button_my_bookings", "intent:my_booking"), *self._manage,
                      self._button("button_human", "intent:human"))  # fmt: skip

    def new_session(self, conversation: str, customer: str) -> Session:
        initial = self.template.initial
        return Session(
            tenant=self.profile.id,
            conversation=conversation,
            customer=customer,
            state=initial,
            flow=self.template.states[initial].flow,
        )

    def text(self, key: str, **facts: str) -> str:
        """A text in the tenant's locale (the tenant's override first); missing facts read as empty."""
        return self._texts[key].format_map({name: facts.get(name, "") for name in self._fields[key]})

    # --- entry points ------------------------------------------------------------------------------------

    def _unheard(self, session: Session) -> StepResult:
        """A voice note nobody could read: ask for text, offer the last buttons again, and change nothing else
        (it is not a failed attempt at the slot being asked)."""
        reply = Reply(key="voice_unsupported", text=self.text("voice_unsupported"), buttons=tuple(session.offered))
        return StepResult(replies=(reply,))

    async def step(self, session: Session, message: UserInput, now: datetime, calendar: CalendarPort) -> StepResult:
        """Handle one customer message; mutates ``session`` in place."""
        if message.voice and not message.text.strip():
            return self._unheard(session)
        turn = self._turn(session, now, calendar)
        pressed = self._pressed(session, message)
        if pressed and pressed.startswith(REMINDER_PREFIX):
            await self._reminder_button(turn, pressed)
            return turn.result()
        text = "" if pressed else message.text.strip()
        intent = self._intent(pressed, text)
        found = self._found(turn, pressed, text, message.phone)
        await self._dispatch(turn, intent, pressed, text, found)
        return turn.result()

    async def resolve(
        self, session: Session, outcome: EffectOutcome, now: datetime, calendar: CalendarPort
    ) -> StepResult:
        """Continue after ``bot/`` carried out the Book/Cancel/Reschedule effect of the last step."""
        turn = self._turn(session, now, calendar)
        flow = self._state(turn).flow
        if outcome.ok:
            session.booking_id = outcome.booking_id or session.booking_id
            self._go(turn, "done")
            self._say(turn, self._rest_prompt(turn))
        elif outcome.reason == "taken":
            old = session.slots.pop("time", None)
            self._go(turn, "taken")
            await self._advance(turn, flow, [Rejection("time", "taken", old)] if old else [])
        elif outcome.reason == "not_found" and flow != "booking":
            self._go(turn, "not_found")
            self._say(turn, self._reply("not_found", {}, self._book))
        else:
            self._go(turn, "failed")
            key = "book_failed" if flow == "booking" else "effect_failed"
            self._say(turn, self._reply(key, self._facts(turn), self._yes_no))
        return turn.result()

    def booking_facts(self, booking: BookingView) -> dict[str, str]:
        """The facts a text about ``booking`` shows (service label, date, time, business), in the locale."""
        start = booking.start.astimezone(self._tz)
        service = self.profile.service(booking.service)
        label = service.label if service else booking.service
        day = self._date(start.date().isoformat())
        return {"business": self.profile.name, "service": label, "date": day, "time": f"{start:%H:%M}"}

    def reminder_buttons(self, booking_id: str) -> tuple[Button, ...]:
        """Confirm / reschedule / cancel under a reminder; they work whatever the dialog is doing then."""
        actions = ("confirm", "confirm"), ("reschedule", "reschedule_it"), ("cancel", "cancel_it")
        return tuple(self._button(f"button_{key}", f"{REMINDER_PREFIX}{act}:{booking_id}") for act, key in actions)

    async def _reminder_button(self, turn: _Turn, pressed: str) -> None:
        action, _, booking_id = pressed.removeprefix(REMINDER_PREFIX).partition(":")
        bookings = await turn.ctx.calendar.customer_bookings(turn.session.customer)
        booking = next((b for b in bookings if b.id == booking_id), None)
        flow = "cancel" if action == "cancel" else "reschedule"
        if booking is None:
            if action != "confirm":
                self._reset(turn.session)
                self._go(turn, f"{flow}_none")
            self._say(turn, self._reply("not_found", {}, self._book))
        elif action == "confirm":
            self._say(turn, self._reply("reminder_confirmed", self.booking_facts(booking)))
        else:
            self._reset(turn.session)
            self._choose(turn, booking, flow)
            self._go(turn, f"{flow}_one")
            await self._enter_flow(turn, flow, {})

    # --- reading the message -----------------------------------------------------------------------------

    def _turn(self, session: Session, now: datetime, calendar: CalendarPort) -> _Turn:
        if session.state not in self.template.states:  # saved under an older template: start afresh
            session.state, session.flow = self.template.initial, self.template.states[self.template.initial].flow
            self._reset(session)
        return _Turn(session, Context(self.profile, now.astimezone(self._tz), session.slots, calendar))

    @staticmethod
    def _pressed(session: Session, message: UserInput) -> str | None:
        """The value of the button pressed, typed by its number ("2") or its exact label."""
        if message.button:
            return message.button
        text = message.text.strip()
        if text.isdigit() and 1 <= int(text) <= len(session.offered):
            return session.offered[int(text) - 1].value
        folded = text.casefold()
        return next((b.value for b in session.offered if folded and b.label.casefold() == folded), None)

    def _intent(self, pressed: str | None, text: str) -> str | None:
        if pressed is None:
            return self.template.intent_matcher.match(text) if text else None
        name = pressed.removeprefix("intent:")
        return name if name in INTENTS and (name != pressed or name in ("yes", "no")) else None

    def _found(self, turn: _Turn, pressed: str | None, text: str, phone: str | None) -> dict[str, str]:
        """Slot values in the message: extracted from the text, carried by a button or a shared contact."""
        ctx = ExtractContext(
            now=turn.ctx.now,
            tz=self._tz,
            locale=self.profile.locale,
            services=self.profile.services,
            default_region=self.profile.default_region,
            expecting=self._state(turn).slot,
        )
        found = extract_all(text, ctx) if text else {}
        if pressed:
            prefix, _, value = pressed.partition(":")
            if prefix in SLOT_BUTTONS and value:
                found[SLOT_BUTTONS[prefix]] = value
        if phone:
            found["phone"] = extract_phone(phone, ctx) or phone
        return {k: v for k, v in found.items() if k in self.slots or (k in HINTS and "time" in self.slots)}

    # --- what to do with it ------------------------------------------------------------------------------

    async def _dispatch(
        self, turn: _Turn, intent: str | None, pressed: str | None, text: str, found: dict[str, str]
    ) -> None:
        state = self._state(turn)
        if intent in HARD:
            await self._global(turn, self._hard_intent(state, intent), found)
        elif state.kind == "pending":
            turn.effects += self._effects(turn)  # an outcome never came back: ask again (effects are idempotent)
        elif state.kind == "pick":
            await self._pick(turn, pressed, intent)
        elif state.kind == "confirm":
            await self._confirm(turn, pressed, intent, found)
        elif self._flow_values(state, found) or (state.kind in RESTING and found):
            await self._fill(turn, found)
        elif state.kind == "ask" and intent not in SOFT:
            await self._failed(turn, self._raw_rejections(state, text))
        else:
            await self._chat(turn, intent)

    @staticmethod
    def _hard_intent(state: StateSpec, intent: str | None) -> str:
        assert intent is not None
        # At the booking's own confirmation, "cancel the booking" means "don't make it", not "cancel my booking".
        return "stop" if intent == "cancel_booking" and (state.kind, state.flow) == ("confirm", "booking") else intent

    def _flow_values(self, state: StateSpec, found: Mapping[str, str]) -> bool:
        order = self.template.flows.get(state.flow, ())
        return any(k in order or (k in HINTS and "time" in order) for k in found)

    def _raw_rejections(self, state: StateSpec, text: str) -> list[Rejection]:
        """A phone or email that the extractor could not read is reported as invalid, not just missed."""
        slot = state.slot
        if slot and text and self.slots[slot].extractor in RAW_INVALID:
            return [Rejection(slot, "invalid", text)]
        return []

    async def _global(self, turn: _Turn, intent: str, found: dict[str, str]) -> None:
        s = turn.session
        if intent == "human":
            turn.effects.append(Handoff(reason="requested"))
            self._go(turn, "human")
            self._say(turn, self._rest_prompt(turn))
        elif intent == "restart":
            fresh = s.state == self.template.initial and not s.slots
            self._reset(s)
            self._go(turn, "restart")
            if fresh and not found:
                self._say(turn, self._reply("greeting", self._facts(turn)))
            await (self._fill(turn, found) if found else self._advance(turn, "booking", []))
        elif intent == "stop":
            self._reset(s)
            self._go(turn, "stop")
            self._say(turn, self._reply("goodbye", self._facts(turn), self._book))
        elif intent == "my_booking":
            await self._show_bookings(turn)
        else:
            await self._start_flow(turn, "cancel" if intent == "cancel_booking" else "reschedule", found)

    async def _chat(self, turn: _Turn, intent: str | None) -> None:
        """No slot value and no intent that changes anything: greet, help, or re-ask."""
        state = self._state(turn)
        if state.kind not in RESTING:
            if intent == "help":
                self._say(turn, self._reply("help", self._facts(turn)))
            await self._reprompt(turn)
        elif intent == "greeting":
            self._say(turn, self._reply("greeting", self._facts(turn)))
            await self._fill(turn, {})
        elif intent is None and state.kind == "waiting":
            self._say(turn, self._reply("handoff_wait", self._facts(turn)))
        else:
            if self.template.machine.allows(turn.session.state, "help"):
                self._go(turn, "help")
            self._say(turn, self._reply("help", self._facts(turn), self._menu))

    # --- slot filling --------------------------------------------------------------------------------------

    async def _fill(self, turn: _Turn, found: Mapping[str, str]) -> None:
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

    async def _apply(self, turn: _Turn, order: Sequence[str], found: Mapping[str, str]) -> tuple[list[Rejection], bool]:
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

    async def _validate(self, turn: _Turn, slot: str, value: str) -> Rejection | None:
        kind = self.slots[slot].extractor
        for name in self.slots[slot].validators:
            if reason := await VALIDATORS[name].checks[kind](value, turn.ctx):
                return Rejection(slot, reason, value)
        return None

    async def _failed(self, turn: _Turn, rejections: list[Rejection]) -> None:
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

    async def _advance(self, turn: _Turn, flow: str, rejections: list[Rejection], key: str | None = None) -> None:
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

    # --- offers --------------------------------------------------------------------------------------------

    async def _ask_reply(
        self, turn: _Turn, slot: str, key: str, rejection: Rejection | None, times: Sequence[str] = ()
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

    async def _time_offer(self, turn: _Turn, near: str | None) -> tuple[list[str], Rejection | None]:
        """Free start times on the chosen day, nearest to what was asked first (nothing asked: spread over the
        day). A bound that nothing meets ("after 6" on a day full after 18:00) gets the nearest times and a note
        (``nothing_after_time``)."""
        s = turn.session
        service, day = s.slots.get("service"), parse_date(s.slots.get("date", ""))
        if service is None or day is None:
            return [], None
        free = [_hhmm(start.astimezone(self._tz)) for start in await turn.ctx.free_slots(service, day, day)]
        after, before = s.slots.get("time_after"), s.slots.get("time_before")
        if near is None and after is not None:
            later = [t for t in free if t >= after]
            return (later, None) if later else (_nearest(free, after), Rejection("time", "nothing_after", after))
        if near is None and before is not None:
            earlier = [t for t in reversed(free) if t < before]
            return (earlier, None) if earlier else (_nearest(free, before), Rejection("time", "nothing_before", before))
        return (_nearest(free, near) if near else _spread(free)), None

    async def _date_offer(self, turn: _Turn, rejection: Rejection | None) -> list[date]:
        """The next days with free times for the service (after a closed or full day: after that day)."""
        today = turn.ctx.today
        start = today
        if rejection and rejection.reason in ("closed", "full") and (day := parse_date(rejection.value)):
            start = max(today, day + timedelta(days=1))
        days = await self._free_days(turn, start)
        return days or (await self._free_days(turn, today) if start > today else [])

    async def _free_days(self, turn: _Turn, start: date) -> list[date]:
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

    # --- confirmations, picks and effects ------------------------------------------------------------------

    async def _confirm(self, turn: _Turn, pressed: str | None, intent: str | None, found: dict[str, str]) -> None:
        s, state = turn.session, self._state(turn)
        order = self.template.flows.get(state.flow, ())
        change = pressed.removeprefix("chg:") if pressed and pressed.startswith("chg:") else None
        if change in order:
            s.slots.pop(change, None)
            await self._advance(turn, state.flow, [])
        elif self._flow_values(state, found):  # a correction: apply it and confirm again
            rejections, _ = await self._apply(turn, order, found)
            await self._advance(turn, state.flow, rejections)
        elif intent == "yes":
            turn.effects += self._effects(turn)
            self._go(turn, "commit")
        elif intent == "no":
            await self._decline(turn, state)
        elif intent in SOFT:
            await self._chat(turn, intent)
        else:
            await self._retry(turn)

    async def _decline(self, turn: _Turn, state: StateSpec) -> None:
        if state.flow == "cancel":
            await self._keep(turn)
            return
        changes = [
            self._button(f"label_{slot}", f"chg:{slot}")
            for slot in self.template.flows[state.flow]
            if self.slots[slot].required
        ]
        last = self._button("button_start_over", "intent:restart")
        if state.flow == "reschedule":
            last = self._button("button_keep", "intent:stop")
        self._say(turn, self._reply("change_what", {}, [*changes, last]))

    async def _keep(self, turn: _Turn) -> None:
        facts = self._facts(turn)
        self._go(turn, "keep")
        self._say(turn, self._reply("cancel_kept", facts, self._book))

    def _effects(self, turn: _Turn) -> list[Effect]:
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

    async def _pick(self, turn: _Turn, pressed: str | None, intent: str | None) -> None:
        s, state = turn.session, self._state(turn)
        if pressed and pressed.startswith("bk:"):
            bookings = await turn.ctx.calendar.customer_bookings(s.customer)
            chosen = next((b for b in bookings if b.id == pressed[3:]), None)
            if chosen is None:
                self._say(turn, self._reply("not_found", {}))
                await self._start_flow(turn, state.flow, {})
                return
            self._choose(turn, chosen, state.flow)
            self._go(turn, "pick")
            await self._enter_flow(turn, state.flow, {})
        elif intent in SOFT:
            await self._chat(turn, intent)
        else:
            await self._retry(turn)

    async def _start_flow(self, turn: _Turn, flow: str, found: Mapping[str, str]) -> None:
        """Cancel or reschedule: none -> say so; one -> straight to it; several -> pick one."""
        s = turn.session
        bookings = await turn.ctx.calendar.customer_bookings(s.customer)
        self._reset(s)
        if not bookings:
            self._go(turn, f"{flow}_none")
            self._say(turn, self._reply("no_bookings", {}, self._book))
        elif len(bookings) == 1:
            self._choose(turn, bookings[0], flow)
            self._go(turn, f"{flow}_one")
            await self._enter_flow(turn, flow, found)
        else:
            self._go(turn, f"{flow}_many")
            self._say(turn, self._pick_reply(self._prompt_key(turn), bookings))

    async def _enter_flow(self, turn: _Turn, flow: str, found: Mapping[str, str]) -> None:
        if flow == "reschedule":  # "move my booking to Friday at 6" carries the new date and time
            rejections, _ = await self._apply(turn, self.template.flows[flow], found)
            await self._advance(turn, flow, rejections)
        else:
            self._say(turn, self._reply(self._prompt_key(turn), self._facts(turn), self._yes_no))

    def _choose(self, turn: _Turn, booking: BookingView, flow: str) -> None:
        s = turn.session
        start = booking.start.astimezone(self._tz)
        prefix = "old_" if flow == "reschedule" else ""
        s.booking_id = booking.id
        s.slots.update(
            {"service": booking.service, f"{prefix}date": start.date().isoformat(), f"{prefix}time": f"{start:%H:%M}"}
        )

    def _pick_reply(self, key: str, bookings: Sequence[BookingView]) -> Reply:
        buttons = [Button(label=self._booking_line(b), value=f"bk:{b.id}") for b in bookings]
        return self._reply(key, {}, buttons)

    async def _show_bookings(self, turn: _Turn) -> None:
        bookings = await turn.ctx.calendar.customer_bookings(turn.session.customer)
        resting = self._state(turn).kind in RESTING
        if resting:
            self._go(turn, "my_booking")
        if not bookings:
            self._say(turn, self._reply("no_bookings", {}, self._book if resting else ()))
        else:
            lines = "\n".join(self._booking_line(b) for b in bookings)
            self._say(turn, self._reply("my_bookings", {"bookings": lines, "count": str(len(bookings))},
                                        self._manage if resting else ()))  # fmt: skip
        if not resting:
            await self._reprompt(turn)

    def _booking_line(self, booking: BookingView) -> str:
        return self.text("booking_line", **self.booking_facts(booking))

    # --- re-asking -----------------------------------------------------------------------------------------

    async def _retry(self, turn: _Turn) -> None:
        """Nothing usable at a confirm or pick state: count the attempt and ask again."""
        s = turn.session
        s.attempts[s.state] = s.attempts.get(s.state, 0) + 1
        if s.attempts[s.state] >= self.max_attempts:
            self._give_up(turn, s.state)
        else:
            await self._reprompt(turn, retry=True)

    async def _reprompt(self, turn: _Turn, *, retry: bool = False) -> None:
        """Show the current state's prompt again (its retry text when ``retry``)."""
        state = self._state(turn)
        if state.kind == "ask":
            await self._advance(turn, state.flow, [])
        elif state.kind == "confirm":
            key = "retry_confirm" if retry and state.flow == "booking" else self._prompt_key(turn)
            self._say(turn, self._reply(key, self._facts(turn), self._yes_no))
        elif state.kind == "pick":
            bookings = await turn.ctx.calendar.customer_bookings(turn.session.customer)
            self._say(turn, self._pick_reply("retry_pick" if retry else self._prompt_key(turn), bookings))

    def _give_up(self, turn: _Turn, what: str) -> None:
        turn.effects.append(Handoff(reason=f"attempts:{what}"))
        turn.session.attempts.clear()
        self._go(turn, "give_up")
        self._say(turn, self._reply("too_many_attempts", self._facts(turn)))

    def _rest_prompt(self, turn: _Turn) -> Reply:
        key = self._prompt_key(turn)
        assert key is not None, f"state {turn.session.state!r} needs a text"
        return self._reply(key, self._facts(turn))

    # --- state, texts and facts ------------------------------------------------------------------------------

    def _state(self, turn: _Turn) -> StateSpec:
        return self.template.states[turn.session.state]

    def _prompt_key(self, turn: _Turn) -> str:
        key = self._state(turn).prompt(turn.session.state)
        assert key is not None, f"state {turn.session.state!r} shows no prompt"
        return key

    def _go(self, turn: _Turn, trigger: str) -> None:
        s = turn.session
        s.state = self.template.machine.dest(s.state, trigger)  # raises IllegalTransition
        s.flow = self.template.states[s.state].flow

    @staticmethod
    def _reset(s: Session) -> None:
        s.slots.clear()
        s.attempts.clear()
        s.booking_id = None

    @staticmethod
    def _say(turn: _Turn, reply: Reply) -> None:
        turn.replies.append(reply)

    def _button(self, key: str, value: str) -> Button:
        return Button(label=self.text(key), value=value)

    def _reply(self, key: str, facts: Mapping[str, str], buttons: Sequence[Button] = ()) -> Reply:
        used = {name: facts.get(name, "") for name in self._fields[key]}
        return Reply(
            key=key,
            text=self._texts[key].format_map(used),
            buttons=tuple(buttons[:BUTTON_CAP]),
            facts={name: value for name, value in used.items() if value},
        )

    def _facts(self, turn: _Turn, rejection: Rejection | None = None) -> dict[str, str]:
        slots = turn.session.slots
        facts = {"business": self.profile.name, "days": str(self.profile.horizon_days)}
        facts.update({k: slots[k] for k in ("time", "old_time", "name", "phone", "email") if k in slots})
        facts.update({k: self._date(slots[k]) for k in ("date", "old_date") if k in slots})
        if (service := self.profile.service(slots.get("service", ""))) is not None:
            facts["service"] = service.label
        if rejection and rejection.slot == "date" and (day := parse_date(rejection.value)):
            facts["date"], facts["on_day"] = self._date(rejection.value), self._format.on_day[day.weekday()]
        elif rejection and rejection.slot == "time":
            facts["time"] = rejection.value
        return facts

    def _date(self, iso: str) -> str:
        day = parse_date(iso)
        if day is None:
            return iso
        fmt = self._format
        return fmt.date.format(weekday=fmt.weekdays[day.weekday()], day=day.day, month=fmt.months[day.month - 1])


def _override(spec: SlotSpec, override: tuple[bool | None, list[str] | None] | None) -> SlotSpec:
    if override is None:
        return spec
    required, validators = override
    update: dict[str, object] = {}
    if required is not None:
        update["required"] = required
    if validators is not None:
        update["validators"] = tuple(validators)
    return spec.model_copy(update=update)


def _nearest(times: Sequence[str], wanted: str) -> list[str]:
    """``times`` ordered by distance from ``wanted`` (earlier first on a tie)."""

    def minutes(hm: str) -> int:
        return int(hm[:2]) * 60 + int(hm[3:5])

    target = minutes(wanted) if len(wanted) == 5 else 0
    return sorted(times, key=lambda t: (abs(minutes(t) - target), t))


def _spread(times: Sequence[str]) -> list[str]:
    """Nothing asked: the earliest time of each hour first, so the buttons cover the day, then the rest."""
    firsts: dict[str, str] = {}
    for t in times:
        firsts.setdefault(t[:2], t)
    chosen = list(firsts.values())[:BUTTON_CAP]
    chosen += [t for t in times if t not in chosen][: BUTTON_CAP - len(chosen)]
    return sorted(chosen)


def _hhmm(moment: datetime) -> str:
    """``HH:MM`` (what strftime("%H:%M") gives, at a fraction of its cost: it runs for every offered time)."""
    return f"{moment.hour:02d}:{moment.minute:02d}"
