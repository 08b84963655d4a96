"""Managing bookings: show the customer's bookings, pick one, cancel or reschedule it; confirmations and
re-asking at confirm and pick states."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dialogs.flows.base import Turn
from dialogs.flows.booking import BookingFlow
from dialogs.model import Button, Reply
from dialogs.ports import BookingView
from dialogs.schema import RESTING, StateSpec

REMINDER_PREFIX = "remind:"  # buttons under a reminder: remind:<confirm|reschedule|cancel>:<booking id>


class ManageFlow(BookingFlow):
    async def _decline(self, turn: Turn, state: StateSpec) -> None:
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

    async def _keep(self, turn: Turn) -> None:
        facts = self._facts(turn)
        self._go(turn, "keep")
        self._say(turn, self._reply("cancel_kept", facts, self._book))

    async def _start_flow(self, turn: Turn, flow: str, found: Mapping[str, str]) -> None:
        """Cancel or reschedule: none -> say so; one -> straight to it; several -> pick one."""
        s = turn.session
        held = await turn.ctx.calendar.customer_bookings(s.customer)
        self._reset(s)
        bookings, found = self._named(held, found)
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

    def _named(
        self, bookings: Sequence[BookingView], found: Mapping[str, str]
    ) -> tuple[Sequence[BookingView], Mapping[str, str]]:
        """"move my Friday booking": a date that is the day of exactly one booking names that booking (and is
        not the new date)."""
        day = found.get("date")
        named = [b for b in bookings if b.start.astimezone(self._tz).date().isoformat() == day]
        if day is None or len(named) != 1:
            return bookings, found
        return named, {k: v for k, v in found.items() if k != "date"}

    async def _enter_flow(self, turn: Turn, flow: str, found: Mapping[str, str]) -> None:
        if flow == "reschedule":  # "move my booking to Friday at 6" carries the new date and time
            rejections, _ = await self._apply(turn, self.template.flows[flow], found)
            await self._advance(turn, flow, rejections)
        else:
            self._say(turn, self._reply(self._prompt_key(turn), self._facts(turn), self._yes_no))

    def _choose(self, turn: Turn, booking: BookingView, flow: str) -> None:
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

    async def _show_bookings(self, turn: Turn) -> None:
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

    async def _reminder_button(self, turn: Turn, pressed: str) -> None:
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

    async def _retry(self, turn: Turn) -> None:
        """Nothing usable at a confirm or pick state: count the attempt and ask again."""
        s = turn.session
        s.attempts[s.state] = s.attempts.get(s.state, 0) + 1
        if s.attempts[s.state] >= self.max_attempts:
            self._give_up(turn, s.state)
        else:
            await self._reprompt(turn, retry=True)

    async def _reprompt(self, turn: Turn, *, retry: bool = False) -> None:
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
