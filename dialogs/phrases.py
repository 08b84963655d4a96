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

from rapidfuzz import process
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


def _compile(phrase: str) -> tuple[_Word, ...]:
    return tuple(_Word(w, raw.endswith("*")) for raw in phrase.split() for w in words(raw.rstrip("*")))


class _Vocabulary:
    """Every pattern word, and which of them a message word matches (computed once per distinct word: exact
    and stem lookups, then one ``rapidfuzz`` pass over the long words for typos)."""

    CACHE = 20_000  # distinct message words remembered

    def __init__(self, patterns: Sequence[tuple[_Word, ...]]) -> None:
        self.ids: dict[_Word, int] = {}
        for pattern in patterns:
            for word in pattern:
                self.ids.setdefault(word, len(self.ids))
        self._exact = {w.text: i for w, i in self.ids.items() if not w.stem}
        self._stems = [(w.text, i) for w, i in self.ids.items() if w.stem]
        self._long = [(w.text, i) for w, i in self.ids.items() if not w.stem and len(w.text) >= FUZZY_MIN_LEN]
        self._cache: dict[str, frozenset[int]] = {}

    def matches(self, token: str) -> frozenset[int]:
        found = self._cache.get(token)
        if found is None:
            if len(self._cache) >= self.CACHE:
                self._cache.clear()
            found = self._cache[token] = self._lookup(token)
        return found

    def _lookup(self, token: str) -> frozenset[int]:
        ids = {i for stem, i in self._stems if token.startswith(stem)}
        if (exact := self._exact.get(token)) is not None:
            ids.add(exact)
        if len(token) >= FUZZY_MIN_LEN:
            choices = [text for text, _ in self._long]
            hits = process.extract(token, choices, scorer=Indel.normalized_similarity,
                                   score_cutoff=FUZZY_SIMILARITY, limit=None)  # fmt: skip
            ids.update(self._long[index][1] for _, _, index in hits)
        return frozenset(ids)


def _found(pattern: Sequence[int], text: Sequence[frozenset[int]]) -> bool:
    """``pattern`` occurs in ``text`` in order, its words at most :data:`GAP` words apart."""
    return any(pattern[0] in word and _rest_found(pattern[1:], text, start + 1) for start, word in enumerate(text))


def _rest_found(pattern: Sequence[int], text: Sequence[frozenset[int]], at: int) -> bool:
    if not pattern:
        return True
    return any(
        pattern[0] in text[index] and _rest_found(pattern[1:], text, index + 1)
        for index in range(at, min(at + GAP + 1, len(text)))
    )


class IntentMatcher:
    """Finds the intents a message names, by the template's patterns of any locale."""

    def __init__(self, intents: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
        compiled = [
            (name, [c for ps in intents[name].values() for p in ps if (c := _compile(p))])
            for name in INTENTS
            if name in intents
        ]
        self._vocabulary = _Vocabulary([p for _, patterns in compiled for p in patterns])
        ids = self._vocabulary.ids
        self._names = [name for name, _ in compiled]
        # each pattern is looked at only when the message has its first word (most messages: a handful)
        self._by_first: dict[int, list[tuple[int, tuple[int, ...], frozenset[int]]]] = {}
        for rank, (_, patterns) in enumerate(compiled):
            for p in patterns:
                key = tuple(ids[w] for w in p)
                self._by_first.setdefault(key[0], []).append((rank, key, frozenset(key)))

    def all(self, text: str) -> list[str]:
        """Every intent named in ``text``, in priority order."""
        tokens = words(text)
        if len(tokens) > 1:  # a "?" pattern (help) is a message of its own, not every question
            tokens = [t for t in tokens if t != "?"]
        matched = [self._vocabulary.matches(t) for t in tokens]
        present = frozenset().union(*matched)
        hits: set[int] = set()
        for first in present:
            for rank, pattern, needs in self._by_first.get(first, ()):
                if rank not in hits and needs <= present and _found(pattern, matched):
                    hits.add(rank)
        return [self._names[rank] for rank in sorted(hits)]

    def match(self, text: str) -> str | None:
        """The highest-priority intent named in ``text``."""
        found = self.all(text)
        return found[0] if found else None
