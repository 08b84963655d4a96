"""What every flow of the engine shares: the turn being worked on, texts and replies, facts, state moves.

The engine is layered by flow, each layer a class in its own module that builds on the one before:
:mod:`dialogs.flows.base` (this) -> :mod:`~dialogs.flows.booking` (fill slots, offer free times, book) ->
:mod:`~dialogs.flows.manage` (pick, cancel, reschedule, show the customer's bookings) ->
:mod:`~dialogs.flows.intents` (what a message means in the current state) -> :class:`dialogs.engine.Engine`
(reading a message: buttons, intents and the one call of the slot extractors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from string import Formatter

from dialogs.exceptions import Problem, TemplateError
from dialogs.loader import placeholders, text_problems, validator_problems
from dialogs.model import Button, Effect, Handoff, Reply, StepResult
from dialogs.ports import SlotFallback, TenantProfile
from dialogs.schema import SlotSpec, StateSpec, Template
from dialogs.session import Session
from dialogs.validators import VALIDATORS, Context, parse_date

BUTTON_CAP = 10  # buttons per message: a WhatsApp list's rows (channels degrade longer lists anyway)

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
class Turn:
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


class FlowBase:
    def __init__(
        self,
        template: Template,
        profile: TenantProfile,
        *,
        max_attempts: int = 3,
        slot_overrides: SlotOverrides | None = None,
        slot_fallback: SlotFallback | None = None,
    ) -> None:
        overrides = slot_overrides or {}
        problems = override_problems(template, profile, overrides)
        if problems:
            raise TemplateError([Problem(f"tenant {profile.id}", 0, message) for message in problems])
        self.template = template
        self.machine = template.machine  # read on every turn: a pydantic private attribute is a slow lookup
        self.intent_matcher = template.intent_matcher
        self.profile = profile
        self.max_attempts = max_attempts
        self.slot_fallback = slot_fallback  # asked only when the rules found neither a slot nor an intent
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
        return _render(self._texts[key], {name: facts.get(name, "") for name in self._fields[key]})[0]

    def _rest_prompt(self, turn: Turn) -> Reply:
        key = self._prompt_key(turn)
        assert key is not None, f"state {turn.session.state!r} needs a text"
        return self._reply(key, self._facts(turn))

    def _give_up(self, turn: Turn, what: str) -> None:
        turn.session.attempts.clear()
        self._hand_off(turn, f"attempts:{what}", "give_up", "too_many_attempts")

    def _hand_off(self, turn: Turn, reason: str, trigger: str, key: str) -> None:
        """Hand the conversation to a person: the bot only says a person will reply until staff resume it or
        it has been quiet for a while. With nobody notified (no webhook, no CRM) the reply promises nothing."""
        turn.effects.append(Handoff(reason=reason))
        turn.session.handoff_at = turn.ctx.now.isoformat()
        self._go(turn, trigger)
        self._say(turn, self._reply(self._reachable(key), self._facts(turn)))

    def _reachable(self, key: str) -> str:
        return key if self.profile.handoff_reachable else f"{key}_noted"

    async def _validate(self, turn: Turn, slot: str, value: str) -> Rejection | None:
        kind = self.slots[slot].extractor
        for name in self.slots[slot].validators:
            if reason := await VALIDATORS[name].checks[kind](value, turn.ctx):
                return Rejection(slot, reason, value)
        return None

    def _state(self, turn: Turn) -> StateSpec:
        return self.template.states[turn.session.state]

    def _prompt_key(self, turn: Turn) -> str:
        key = self._state(turn).prompt(turn.session.state)
        assert key is not None, f"state {turn.session.state!r} shows no prompt"
        return key

    def _go(self, turn: Turn, trigger: str) -> None:
        s = turn.session
        s.state = self.machine.dest(s.state, trigger)  # raises IllegalTransition
        s.flow = self.template.states[s.state].flow

    @staticmethod
    def _reset(s: Session) -> None:
        s.slots.clear()
        s.attempts.clear()
        s.booking_id = None

    @staticmethod
    def _say(turn: Turn, reply: Reply) -> None:
        turn.replies.append(reply)

    def _button(self, key: str, value: str) -> Button:
        return Button(label=self.text(key), value=value)

    def _reply(self, key: str, facts: Mapping[str, str], buttons: Sequence[Button] = ()) -> Reply:
        text, used = _render(self._texts[key], {name: facts.get(name, "") for name in self._fields[key]})
        return Reply(
            key=key,
            text=text,
            buttons=tuple(buttons[:BUTTON_CAP]),
            facts={name: value for name, value in used.items() if value},
        )

    def _facts(self, turn: Turn, rejection: Rejection | None = None) -> dict[str, str]:
        slots = turn.session.slots
        facts = {"business": self.profile.name, "days": str(self.profile.horizon_days)}
        facts.update({k: slots[k] for k in ("time", "old_time", "name", "phone", "email") if k in slots})
        facts.update({k: self._date(slots[k]) for k in ("date", "old_date") if k in slots})
        if (service := self.profile.service(slots.get("service", ""))) is not None:
            facts["service"] = service.label
            facts["service_acc"] = service.label_acc or self._format.service_acc.format(label=service.label)
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


_SENTENCE_END = (".", "!", "?", "\n")
_NAMES = frozenset({"service"})  # labels shown in sentence case: capitalised only where a sentence starts


def _render(text: str, facts: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """``text`` with its placeholders filled, and the facts as shown. A label ("Hair colouring") reads in
    sentence case: as written at the start of a sentence, with a lower-case initial inside one ("come for
    hair colouring?"), and as written inside quotes («Стрижка»)."""
    out: list[str] = []
    shown = dict(facts)
    for literal, name, spec, _conversion in Formatter().parse(text):
        out.append(literal)
        if name is None:
            continue
        value = format(facts.get(name, ""), spec or "")
        before = "".join(out).rstrip(" ")
        if name in _NAMES and value and before and not before.endswith(_SENTENCE_END) and before[-1] not in "«\"“'":
            value = _lower_initial(value)
            shown[name] = value
        out.append(value)
    return "".join(out), shown


def _lower_initial(label: str) -> str:
    """"Hair colouring" -> "hair colouring"; an acronym or a name in capitals ("SPA", "OPI") stays."""
    return label[0].lower() + label[1:] if label[1:2].islower() else label
