"""The fact guard: a paraphrase may change words, never facts.

Facts of a template text: the values the dialog put in it (``Reply.facts``: dates, times, names, the service,
the business), the button labels it mentions, and what can be read off the text itself: links, e-mail
addresses, numbers (times, prices, phone numbers, days) and capitalised words inside a sentence (names,
weekdays, months). Every one must appear in the paraphrase; a link or number that the template does not have must
not. Anything else (a different greeting, word order, tone) is the paraphraser's freedom.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_LINK = re.compile(r"(?:https?://|www\.)[^\s<>\"')\]]+[^\s<>\"')\].,;:!?]|[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)
_NUMBER = re.compile(r"\+?\d+(?:[.,:/-]\d+)*(?:[^\W\d_]+\b)?")  # with a unit glued on: 5pm, 24th, 30min
_WORD = re.compile(r"[^\W\d_][\w'’-]*", re.UNICODE)
_SENTENCE_END = re.compile(r"[.!?…:\n]\s*$")


def hard_facts(text: str) -> set[str]:
    """Links, e-mail addresses and numbers of ``text`` (compared exactly, and none may be added)."""
    links = set(_LINK.findall(text))
    rest = _LINK.sub(" ", text)
    return links | set(_NUMBER.findall(rest))


def name_words(text: str) -> set[str]:
    """Capitalised words that do not start a sentence: names, weekdays, months, labels."""
    words: set[str] = set()
    for match in _WORD.finditer(_LINK.sub(" ", text)):
        before = text[: match.start()]
        starts_sentence = not before.strip() or bool(_SENTENCE_END.search(before))
        word = match.group()
        if word[0].isupper() and not starts_sentence and len(word) > 1 and not word.startswith(("I'", "I’")):
            words.add(word)
    return words


def _contains(text: str, fact: str, *, exact: bool) -> bool:
    pattern = r"(?<![\w+])" + re.escape(fact) + r"(?!\w)"
    return re.search(pattern, text, 0 if exact else re.IGNORECASE) is not None


def guard_problems(template: str, paraphrase: str, facts: Iterable[str] = (), labels: Iterable[str] = ()) -> list[str]:
    """Why ``paraphrase`` may not replace ``template`` (empty: it may).

    ``facts``: values the text must keep verbatim; ``labels``: option labels, kept when the template has them.
    """
    if not paraphrase.strip():
        return ["empty paraphrase"]
    problems: list[str] = []
    hard = hard_facts(template)
    soft = {f for f in (*facts, *labels) if f.strip() and _contains(template, f, exact=True)}
    for fact in sorted(hard):
        if not _contains(paraphrase, fact, exact=True):
            problems.append(f"lost {fact!r}")
    for fact in sorted((soft | name_words(template)) - hard):
        if not _contains(paraphrase, fact, exact=False):
            problems.append(f"lost {fact!r}")
    for fact in sorted(hard_facts(paraphrase) - hard):
        problems.append(f"added {fact!r}")
    return problems
