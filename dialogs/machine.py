"""The template's state machine: one ``transitions.Machine`` per template, built at load, never per turn.

The machine holds no model: sessions are plain JSON, and a turn only asks "where does ``trigger`` lead from
``state``?". The answer is read once from the machine's events into a dict, so a lookup costs a dict access,
and a trigger the template does not allow from a state raises :class:`IllegalTransition` (an engine bug or a
broken template, never silently ignored).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict
from transitions import Machine

from dialogs.exceptions import IllegalTransition

ANY = "*"


class TransitionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    trigger: str
    source: str | tuple[str, ...]  # a state, a list of states, or "*" (every state without its own rule)
    dest: str

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.source,) if isinstance(self.source, str) else self.source


Conflict = tuple[int, str]  # (index of the rule, message)


def expand(rules: Sequence[TransitionSpec], states: Iterable[str]) -> tuple[list[tuple[str, str, str]], list[Conflict]]:
    """Resolve ``source: "*"`` to every state that has no explicit rule for the same trigger.

    Returns the ``(trigger, source, dest)`` triples, and the rules that conflict with an earlier one (the same
    trigger from the same source, or a second ``*`` rule for a trigger).
    """
    explicit: dict[tuple[str, str], int] = {}
    problems: list[Conflict] = []
    wildcard: dict[str, int] = {}
    for index, rule in enumerate(rules):
        if ANY in rule.sources:
            if rule.trigger in wildcard:
                first = wildcard[rule.trigger] + 1
                problems.append((index, f"trigger {rule.trigger!r} already has a '*' rule (transition {first})"))
            wildcard.setdefault(rule.trigger, index)
            continue
        for source in rule.sources:
            if (rule.trigger, source) in explicit:
                first = explicit[(rule.trigger, source)] + 1
                problems.append(
                    (index, f"trigger {rule.trigger!r} from {source!r} is already defined (transition {first})")
                )
            explicit.setdefault((rule.trigger, source), index)
    triples = [(t, s, rules[i].dest) for (t, s), i in explicit.items()]
    for trigger, index in wildcard.items():
        triples += [(trigger, s, rules[index].dest) for s in states if (trigger, s) not in explicit]
    return triples, problems


class FlowMachine:
    def __init__(self, template: str, states: Sequence[str], rules: Sequence[TransitionSpec], initial: str) -> None:
        triples, problems = expand(rules, states)
        if problems:
            raise ValueError([message for _, message in problems])  # the loader reports them first, with lines
        self.template = template
        self.machine = Machine(
            model=None,
            states=list(states),
            transitions=[{"trigger": t, "source": s, "dest": d} for t, s, d in triples],
            initial=initial,
            auto_transitions=False,
        )
        self._dest: dict[tuple[str, str], str] = {
            (source, trigger): str(moves[0].dest)  # every rule has a dest (checked at load)
            for trigger, event in self.machine.events.items()
            for source, moves in event.transitions.items()
        }

    def dest(self, state: str, trigger: str) -> str:
        try:
            return self._dest[(state, trigger)]
        except KeyError:
            raise IllegalTransition(
                f"template {self.template!r}: no transition {trigger!r} from state {state!r}"
            ) from None

    def allows(self, state: str, trigger: str) -> bool:
        return (state, trigger) in self._dest

    @property
    def triggers(self) -> frozenset[str]:
        return frozenset(self.machine.events)
