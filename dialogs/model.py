"""Value objects that cross the boundary of the dialog engine.

Inputs: :class:`UserInput`. Outputs: :class:`StepResult` = replies + effects. Effects are *requests* for side
effects that ``bot/`` carries out (book, cancel, ...); their outcomes come back as :class:`EffectOutcome`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Button(_Frozen):
    """A choice offered to the customer. ``value`` is what the engine receives back when it is pressed."""

    label: str
    value: str


class Reply(_Frozen):
    """One message to the customer.

    ``key`` names the template text it came from (replay fixtures assert on it); ``facts`` are the values the
    text must keep verbatim (times, dates, prices) so a paraphraser can be checked against them.
    """

    key: str
    text: str
    buttons: tuple[Button, ...] = ()
    facts: dict[str, str] = Field(default_factory=dict)


# Why a voice note gave no text: the text key of the answer.
VoiceProblem = Literal["voice_unsupported", "voice_too_long", "voice_unreadable", "voice_unheard"]


class UserInput(_Frozen):
    """What the customer did in one turn: typed ``text``, pressed a button (``button`` = its value) or shared a
    contact (``phone``). A voice note arrives transcribed in ``text`` with ``voice`` set; ``voice`` with no
    text means nobody could read it, and ``voice_problem`` names the text that says why (default
    ``voice_unsupported``: no speech-to-text for this tenant), filled with ``voice_facts``."""

    text: str = ""
    button: str | None = None
    phone: str | None = None
    voice: bool = False
    voice_problem: VoiceProblem = "voice_unsupported"
    voice_facts: dict[str, str] = Field(default_factory=dict)


# --- effects ---------------------------------------------------------------------------------------------


class BookSlot(_Frozen):
    kind: Literal["book"] = "book"
    key: str  # idempotency key: (conversation, service, start); the backend reconciles on retry
    service: str
    start: datetime
    minutes: int
    name: str
    phone: str
    email: str | None = None


class CancelBooking(_Frozen):
    kind: Literal["cancel"] = "cancel"
    booking_id: str


class RescheduleBooking(_Frozen):
    kind: Literal["reschedule"] = "reschedule"
    booking_id: str
    start: datetime


class SyncCustomer(_Frozen):
    kind: Literal["sync_customer"] = "sync_customer"
    name: str
    phone: str
    email: str | None = None


class Handoff(_Frozen):
    """The customer needs a human: ``reason`` is machine-readable (e.g. ``attempts:phone``)."""

    kind: Literal["handoff"] = "handoff"
    reason: str


Effect = Annotated[BookSlot | CancelBooking | RescheduleBooking | SyncCustomer | Handoff, Field(discriminator="kind")]


class StepResult(_Frozen):
    replies: tuple[Reply, ...] = ()
    effects: tuple[Effect, ...] = ()


# --- outcomes of effects that the dialog must react to -----------------------------------------------------


class EffectOutcome(_Frozen):
    """The result of a :class:`BookSlot`, :class:`CancelBooking` or :class:`RescheduleBooking`.

    ``ok=False`` with ``reason="taken"`` means the slot went to someone else between offer and booking;
    ``reason="failed"`` means the backend could not be reached after retries.
    """

    effect: Literal["book", "cancel", "reschedule"]
    ok: bool
    booking_id: str | None = None
    reason: Literal["taken", "failed", "not_found"] | None = None
