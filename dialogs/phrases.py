"""Which intents a customer's message names, from the template's phrases (every locale at once)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# Intents, in matching priority: a message naming two intents gets the first one ("cancel my booking"
# also contains "my booking"). ``yes``/``no`` only count in confirm states, ``greeting``/``help`` only when
# the message carries no slot values.
INTENTS = ("human", "restart", "cancel_booking", "reschedule", "my_booking", "stop", "help", "greeting", "no", "yes")


def normalize(text: str) -> str:
    return text.casefold().replace("ё", "е").strip()


class IntentMatcher:
    """Finds the intent a message names, by whole-word phrases of any of the template's locales."""

    def __init__(self, intents: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
        self._patterns = [(name, self._compile(intents[name])) for name in INTENTS if name in intents]

    @staticmethod
    def _compile(by_locale: Mapping[str, Sequence[str]]) -> re.Pattern[str]:
        phrases = sorted({normalize(p) for ps in by_locale.values() for p in ps}, key=len, reverse=True)
        alternatives = "|".join(r"\s+".join(map(re.escape, p.split())) for p in phrases)
        return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")

    def match(self, text: str) -> str | None:
        """The highest-priority intent named in ``text``."""
        norm = normalize(text)
        return next((name for name, pattern in self._patterns if pattern.search(norm)), None)
