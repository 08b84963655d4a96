"""Which intents a customer's message names, from the template's phrase patterns (every locale at once).

Patterns are data (the template's ``intents:`` block, which tenants can extend), matched the way people type:

- words in order, with up to :data:`GAP` other words between them ("cancel my booking" also reads "cancel my
  friday booking");
- ``stem*`` matches every word that starts with ``stem`` (Russian endings: ``отмен*`` is отменить, отмените,
  отмена...);
- words of 5+ letters tolerate a typo (``rapidfuzz`` similarity, as for service names: "cancle", "reshedule").

The matcher reports every intent a message names, in priority order; which one wins is the engine's decision,
from the conversation's context (:mod:`dialogs.flows.intents`): "cancel" while booking stops that booking,
with a booking held it cancels the booking.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rapidfuzz.distance import Indel

# Intents, in priority order: a message naming two intents gets the first one ("cancel my booking" also
# contains "my booking"). ``cancel`` is a bare "cancel" whose meaning depends on the context; ``yes``/``no``
# only count in confirm states, ``thanks``/``greeting``/``help`` only when the message carries nothing else.
INTENTS = (
    "human",
    "restart",
    "cancel_booking",
    "reschedule",
    "cancel",
    "my_booking",
    "ask_price",
    "ask_address",
    "ask_payment",
    "ask_hours",
    "stop",
    "thanks",
    "help",
    "greeting",
    "no",
    "yes",
)
GAP = 2  # other words allowed between two words of a pattern
FUZZY_MIN_LEN = 5
FUZZY_SIMILARITY = 0.8
_WORD = re.compile(r"[\w'/]+|\?")


def normalize(text: str) -> str:
    return text.casefold().replace("ё", "е").replace("’", "'").strip()


def words(text: str) -> list[str]:
    return _WORD.findall(normalize(text))


@dataclass(frozen=True)
class _Word:
    text: str
    stem: bool

    def matches(self, word: str) -> bool:
        if self.stem:
            return word.startswith(self.text)
        if word == self.text:
            return True
        long_enough = len(self.text) >= FUZZY_MIN_LEN and len(word) >= FUZZY_MIN_LEN
        return long_enough and Indel.normalized_similarity(word, self.text) >= FUZZY_SIMILARITY


def _compile(phrase: str) -> tuple[_Word, ...]:
    return tuple(_Word(w, raw.endswith("*")) for raw in phrase.split() for w in words(raw.rstrip("*")))


def _found(pattern: Sequence[_Word], text: Sequence[str]) -> bool:
    """``pattern`` occurs in ``text`` in order, its words at most :data:`GAP` words apart."""
    for start, word in enumerate(text):
        if pattern[0].matches(word) and _rest_found(pattern[1:], text, start + 1):
            return True
    return False


def _rest_found(pattern: Sequence[_Word], text: Sequence[str], at: int) -> bool:
    if not pattern:
        return True
    for index in range(at, min(at + GAP + 1, len(text))):
        if pattern[0].matches(text[index]) and _rest_found(pattern[1:], text, index + 1):
            return True
    return False


class IntentMatcher:
    """Finds the intents a message names, by the template's patterns of any locale."""

    def __init__(self, intents: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
        self._patterns = [
            (name, [c for ps in intents[name].values() for p in ps if (c := _compile(p))])
            for name in INTENTS
            if name in intents
        ]

    def all(self, text: str) -> list[str]:
        """Every intent named in ``text``, in priority order."""
        tokens = words(text)
        if len(tokens) > 1:  # a "?" pattern (help) is a message of its own, not every question
            tokens = [t for t in tokens if t != "?"]
        return [name for name, patterns in self._patterns if any(_found(p, tokens) for p in patterns)]

    def match(self, text: str) -> str | None:
        """The highest-priority intent named in ``text``."""
        found = self.all(text)
        return found[0] if found else None
