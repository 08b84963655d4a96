"""The dialog engine: one customer message in, replies and effects out (DESIGN section 2).

:meth:`Engine.step` reads the message (a pressed button, an intent, slot values), fills and validates slots,
and moves the session through the template's machine: every state change is a trigger the template allows
from the current state (:class:`dialogs.machine.FlowMachine`). Writes never happen here: booking, cancelling
and rescheduling go out as effects, and :meth:`Engine.resolve` continues the dialog with their outcome.

The behaviour lives in :mod:`dialogs.flows`, one module per flow; this module reads the message. The rule
extractors run in exactly one place, :meth:`Engine._found`.
"""

from __future__ import annotations

from datetime import datetime

from dialogs.extract import ExtractContext, extract_all, extract_phone
from dialogs.fallback import fallback_slots
from dialogs.flows.base import Rejection, SlotOverrides, Turn, override_problems
from dialogs.flows.booking import HINTS
from dialogs.flows.intents import IntentFlow
from dialogs.flows.manage import REMINDER_PREFIX
from dialogs.model import EffectOutcome, Reply, StepResult, UserInput
from dialogs.ports import CalendarPort
from dialogs.schema import INTENTS
from dialogs.session import Session
from dialogs.validators import Context

__all__ = ["Engine", "Rejection", "SlotOverrides", "override_problems"]

SLOT_BUTTONS = {"svc": "service", "date": "date", "time": "time"}  # button value prefix -> slot


class Engine(IntentFlow):
    def _unheard(self, session: Session, message: UserInput) -> StepResult:
        """A voice note nobody could read: say why, offer the last buttons again, and change nothing else
        (it is not a failed attempt at the slot being asked)."""
        key = message.voice_problem
        reply = Reply(key=key, text=self.text(key, **message.voice_facts), buttons=tuple(session.offered))
        return StepResult(replies=(reply,))

    async def step(self, session: Session, message: UserInput, now: datetime, calendar: CalendarPort) -> StepResult:
        """Handle one customer message; mutates ``session`` in place."""
        if message.voice and not message.text.strip():
            return self._unheard(session, message)
        turn = self._turn(session, now, calendar)
        pressed = self._pressed(session, message)
        if pressed and pressed.startswith(REMINDER_PREFIX):
            await self._reminder_button(turn, pressed)
            return turn.result()
        text = "" if pressed else message.text.strip()
        intents = self._intents(pressed, text)
        found = self._found(turn, pressed, text, message.phone)
        if self.slot_fallback and text and not found and not intents:
            ctx = self._extract_ctx(turn)
            found = await fallback_slots(self.slot_fallback, ctx, session, text, tuple(self.slots))
        await self._dispatch(turn, intents, pressed, text, found)
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

    def _turn(self, session: Session, now: datetime, calendar: CalendarPort) -> Turn:
        if session.state not in self.template.states:  # saved under an older template: start afresh
            session.state, session.flow = self.template.initial, self.template.states[self.template.initial].flow
            self._reset(session)
        return Turn(session, Context(self.profile, now.astimezone(self._tz), session.slots, calendar))

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

    def _intents(self, pressed: str | None, text: str) -> list[str]:
        """The intents the message names, in priority order (a button names at most one)."""
        if pressed is None:
            return self.intent_matcher.all(text) if text else []
        name = pressed.removeprefix("intent:")
        return [name] if name in INTENTS and (name != pressed or name in ("yes", "no")) else []

    def _extract_ctx(self, turn: Turn) -> ExtractContext:
        return ExtractContext(
            now=turn.ctx.now,
            tz=self._tz,
            locale=self.profile.locale,
            services=self.profile.services,
            default_region=self.profile.default_region,
            expecting=self._state(turn).slot,
        )

    def _found(self, turn: Turn, pressed: str | None, text: str, phone: str | None) -> dict[str, str]:
        """Slot values in the message: extracted from the text, carried by a button or a shared contact."""
        ctx = self._extract_ctx(turn)
        found = extract_all(text, ctx) if text else {}
        if pressed:
            prefix, _, value = pressed.partition(":")
            if prefix in SLOT_BUTTONS and value:
                found[SLOT_BUTTONS[prefix]] = value
        if phone:
            found["phone"] = extract_phone(phone, ctx) or phone
        return {k: v for k, v in found.items() if k in self.slots or (k in HINTS and "time" in self.slots)}
