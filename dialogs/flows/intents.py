"""What a message means where the conversation is: intents that change the flow (cancel, reschedule,
start over, stop, a person), slot values for the running flow, or small talk (greeting, help)."""

from __future__ import annotations

from collections.abc import Mapping

from dialogs.flows.base import Rejection, Turn
from dialogs.flows.booking import HINTS
from dialogs.flows.handoff import HandoffFlow
from dialogs.flows.info import INFO_INTENTS, is_question
from dialogs.schema import RAW_INVALID, RESTING, StateSpec

HARD = frozenset({"human", "restart", "cancel_booking", "reschedule", "my_booking", "stop"})
SOFT = frozenset({"help", "greeting", "thanks"})  # answered only when the message carries nothing else


class IntentFlow(HandoffFlow):
    async def _meaning(self, turn: Turn, intents: list[str], found: Mapping[str, str]) -> str | None:
        """The intent the message means here, from those it names (in priority order): a bare "cancel" while
        a booking is being made stops it, at rest it cancels the booking held; "move it" while booking is a
        correction of the new booking unless the customer holds one; "forget it, book me Saturday at 6"
        starts over with Saturday at 6."""
        state = self._state(turn)
        booking_now = state.flow == "booking" and state.kind not in RESTING
        for intent in intents:
            if intent == "cancel":
                return "cancel_booking" if state.kind in RESTING else "stop"
            if intent == "reschedule" and booking_now and ("service" in found or not await self._holds(turn)):
                continue
            if intent == "stop" and any(k in found for k in ("service", "date", "time", *HINTS)):
                return "restart"
            return intent
        return None

    async def _holds(self, turn: Turn) -> bool:
        return bool(await turn.ctx.calendar.customer_bookings(turn.session.customer))

    async def _dispatch(
        self, turn: Turn, intents: list[str], pressed: str | None, text: str, found: dict[str, str]
    ) -> None:
        if self._waiting(turn):
            return
        state = self._state(turn)
        intent = await self._meaning(turn, intents, found)
        asks = bool(text) and (intent in INFO_INTENTS or (intent is None and is_question(text)))
        if intent in HARD:
            await self._global(turn, self._hard_intent(state, intent), found)
        elif asks and await self._answer(turn, intent, found, text):
            pass
        elif intent in INFO_INTENTS and state.kind not in ("pick", "pending", "confirm"):
            await self._unknown(turn)  # about the business, but the config does not say
        elif state.kind == "pending":
            turn.effects += self._effects(turn)  # an outcome never came back: ask again (effects are idempotent)
        elif state.kind == "pick":
            await self._pick(turn, pressed, intent)
        elif state.kind == "confirm":
            await self._confirm(turn, pressed, intent, found)
        elif self._flow_values(state, found) or (state.kind in RESTING and found):
            await self._fill(turn, found)
        elif asks and not found:
            await self._unknown(turn)
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

    async def _global(self, turn: Turn, intent: str, found: dict[str, str]) -> None:
        s = turn.session
        if intent == "human":
            self._hand_off(turn, "requested", "human", "handoff")
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

    async def _chat(self, turn: Turn, intent: str | None) -> None:
        """No slot value and no intent that changes anything: greet, help, or re-ask."""
        state = self._state(turn)
        if intent == "thanks":
            self._say(turn, self._reply("thanks", self._facts(turn)))
            if state.kind not in RESTING:
                await self._reprompt(turn)
        elif state.kind not in RESTING:
            if intent == "help":
                self._say(turn, self._reply("help", self._facts(turn)))
            await self._reprompt(turn)
        elif intent == "greeting":
            self._say(turn, self._reply("greeting", self._facts(turn)))
            await self._fill(turn, {})
        else:
            if self.machine.allows(turn.session.state, "help"):
                self._go(turn, "help")
            self._say(turn, self._reply("help", self._facts(turn), self._menu))

    async def _confirm(self, turn: Turn, pressed: str | None, intent: str | None, found: dict[str, str]) -> None:
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

    async def _pick(self, turn: Turn, pressed: str | None, intent: str | None) -> None:
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
