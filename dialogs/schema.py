"""The shape of a dialog template (``dialogs/templates/*.yaml``) and the vocabulary the engine understands.

A template declares *what* the dialog is (slots and their order, states, the transitions between them,
intent phrases, texts per locale); the engine (:mod:`dialogs.engine`) supplies the behaviour of each state
kind and fires the triggers named here. :mod:`dialogs.loader` checks a template against this vocabulary, so
an unknown name fails at load, never mid-conversation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from dialogs.machine import FlowMachine, TransitionSpec
from dialogs.phrases import INTENTS, IntentMatcher
from dialogs.validators import VALIDATORS

__all__ = ["INTENTS", "TransitionSpec"]  # part of the template vocabulary, defined where they are used

# Flows the engine can run; a template's ``flows`` maps each to the slots it fills, in asking order.
FLOWS = ("idle", "booking", "cancel", "reschedule")


# Triggers the engine fires; ``need_<slot>`` (one per slot) are added per template.
TRIGGERS = frozenset(
    {
        "complete",  # every required slot of the flow is filled -> its confirm state
        "commit",  # "yes" at a confirm state -> its pending state (an effect is in flight)
        "done", "taken", "failed", "not_found",  # the outcome of that effect
        "pick",  # a booking was chosen in a pick state
        "keep",  # "no" at the cancel confirmation
        "restart", "stop", "human", "give_up", "resume", "help", "my_booking",
        "cancel_none", "cancel_one", "cancel_many",
        "reschedule_none", "reschedule_one", "reschedule_many",
    }
)  # fmt: skip

StateKind = Literal["rest", "waiting", "ask", "confirm", "pick", "pending"]
# Kinds where no flow runs: a message with booking details starts a booking. ``waiting`` is a rest where a
# person was asked to reply (handoff): a message with nothing recognisable gets "they will reply soon".
RESTING: frozenset[str] = frozenset({"rest", "waiting"})
# Kinds that show a prompt on entry; their text key defaults to the state's name.
PROMPTING: frozenset[str] = frozenset({"ask", "confirm", "pick"})

# Placeholders the engine fills, per text key.
DIALOG_FACTS = frozenset(
    {"business", "service", "service_acc", "date", "time", "name", "phone", "email", "old_date", "old_time"}
)
REJECTION_FACTS = DIALOG_FACTS | {"on_day", "days"}
_PLAIN: frozenset[str] = frozenset()
BOOKING_FACTS = frozenset({"business", "service", "date", "time"})
_BUTTONS = ("yes", "no", "start_over", "human", "book", "my_bookings", "reschedule", "cancel_booking", "keep",
            "confirm", "reschedule_it", "cancel_it")  # fmt: skip
FIXED_TEXTS: dict[str, frozenset[str]] = {
    "greeting": frozenset({"business"}),
    "help": frozenset({"business"}),
    "goodbye": frozenset({"business"}),
    "thanks": frozenset({"business"}),
    "info_answer": frozenset({"answer"}),  # an answer from the tenant's info: block
    "info_price": frozenset({"service", "price"}),
    "info_prices": frozenset({"prices"}),
    "booking_price": frozenset({"service", "price"}),  # one line of info_prices
    "info_hours": frozenset({"hours"}),
    "info_closed": frozenset({"on_day", "hours"}),
    "info_unknown": frozenset({"business"}),  # a question the config cannot answer; a colleague is offered
    "info_dont_know": frozenset({"business"}),
    "handoff_wait": frozenset({"business"}),
    "too_many_attempts": frozenset({"business"}),
    # the same, when nobody is notified of a handoff (no webhook, no CRM): they promise no reply
    "handoff_noted": frozenset({"business"}),
    "handoff_wait_noted": frozenset({"business"}),
    "too_many_attempts_noted": frozenset({"business"}),
    "retry_confirm": DIALOG_FACTS,
    "retry_pick": _PLAIN,
    "change_what": _PLAIN,
    "cancel_kept": DIALOG_FACTS,
    "no_bookings": _PLAIN,
    "my_bookings": frozenset({"bookings", "count"}),
    "booking_line": frozenset({"service", "date", "time"}),
    "full_date": REJECTION_FACTS,
    "no_dates": DIALOG_FACTS,
    "nothing_after_time": REJECTION_FACTS,  # "after 6" and nothing is free after 18:00 that day
    "nothing_before_time": REJECTION_FACTS,
    "nothing_between_time": REJECTION_FACTS,  # "between 3 and 5", "in the morning": nothing free inside
    "book_failed": DIALOG_FACTS,
    "effect_failed": DIALOG_FACTS,
    "not_found": _PLAIN,
    "voice_unsupported": _PLAIN,  # a voice note and no speech-to-text to read it (or not in this language)
    "voice_too_long": frozenset({"minutes"}),  # over voice.max_seconds (or max_bytes)
    "voice_unreadable": _PLAIN,  # not decodable audio
    "voice_unheard": _PLAIN,  # no speech in it
    "voice_echo": frozenset({"text"}),  # voice.echo: what was heard, before the answer
    # Sent outside a turn (bot.reminders, cal.com webhooks), about one booking.
    **dict.fromkeys(("reminder", "reminder_confirmed", "moved_by_business", "cancelled_by_business"), BOOKING_FACTS),
    **{f"button_{name}": _PLAIN for name in _BUTTONS},
}
# Per slot: the re-ask after input that filled nothing, and the slot's name on a "change ..." button.
SLOT_TEXTS: dict[str, frozenset[str]] = {"retry_{slot}": DIALOG_FACTS, "label_{slot}": _PLAIN}
# Slot kinds whose raw text is reported as invalid when the extractor finds nothing in it.
RAW_INVALID = frozenset({"phone", "email"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlotSpec(_Strict):
    extractor: str  # a name in dialogs.extract.EXTRACTORS; the slot is named after it
    validators: tuple[str, ...] = ()  # names in dialogs.validators.VALIDATORS, checked in order
    required: bool = True


class StateSpec(_Strict):
    flow: str
    kind: StateKind
    slot: str | None = None  # the slot an ``ask`` state asks for
    text: str | None = None  # the prompt's text key (default: the state's name, for prompting kinds)

    def prompt(self, name: str) -> str | None:
        return self.text or (name if self.kind in PROMPTING else None)


class DateFormat(_Strict):
    """How dates read in one locale: ``date`` uses {weekday}, {day} and {month}."""

    date: str
    weekdays: tuple[str, ...] = Field(min_length=7, max_length=7)  # Monday first
    months: tuple[str, ...] = Field(min_length=12, max_length=12)
    on_day: tuple[str, ...] = Field(min_length=7, max_length=7)  # "on Sunday" / "в воскресенье"
    # {service_acc} for a service without a configured ``label_acc``: a form that needs no inflection
    service_acc: str = "{label}"


class Template(_Strict):
    name: str
    description: str = ""
    initial: str = "start"
    flows: dict[str, tuple[str, ...]]
    slots: dict[str, SlotSpec]
    states: dict[str, StateSpec]
    transitions: tuple[TransitionSpec, ...]
    intents: dict[str, dict[str, tuple[str, ...]]]  # intent -> locale -> phrases
    formats: dict[str, DateFormat]  # locale -> date format
    texts: dict[str, dict[str, str]]  # locale -> key -> text

    _source: str = PrivateAttr(default="<template>")
    _machine: FlowMachine | None = PrivateAttr(default=None)
    _intents: IntentMatcher | None = PrivateAttr(default=None)

    @property
    def source(self) -> str:
        """The file the template was loaded from (for messages)."""
        return self._source

    @property
    def machine(self) -> FlowMachine:
        assert self._machine is not None, "templates are built by dialogs.loader"
        return self._machine

    @property
    def intent_matcher(self) -> IntentMatcher:
        assert self._intents is not None, "templates are built by dialogs.loader"
        return self._intents

    def text_catalog(self) -> dict[str, frozenset[str]]:
        """Every text key the engine may show with this template, with the placeholders it fills in."""
        catalog = dict(FIXED_TEXTS)
        for slot, spec in self.slots.items():
            for pattern, facts in SLOT_TEXTS.items():
                catalog[pattern.format(slot=slot)] = facts
            catalog.update(dict.fromkeys(self.rejection_keys(slot, spec.validators), REJECTION_FACTS))
        for name, state in self.states.items():
            if key := state.prompt(name):
                catalog.setdefault(key, DIALOG_FACTS)
        return catalog

    def rejection_keys(self, slot: str, validators: tuple[str, ...]) -> set[str]:
        """The text keys of a slot's rejections (``<reason>_<slot>``) under the given validators."""
        reasons = {r for v in validators if v in VALIDATORS for r in VALIDATORS[v].reasons}
        if slot in self.slots and self.slots[slot].extractor in RAW_INVALID:
            reasons.add("invalid")
        return {f"{reason}_{slot}" for reason in reasons}
