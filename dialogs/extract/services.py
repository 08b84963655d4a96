"""Which service the customer means: fuzzy match of the text's words against each service's id, label and
synonyms (case-insensitive, ё = е), tolerant of typos ("hiarcut", "стришка") and of Russian endings ("на
стрижку", "маникюра").

Two words match when they are equal; or when both have 4+ letters and share a prefix that leaves at most
two letters over on either side (inflection: "стрижку" / "стрижка", "ногтей" / "ногти"); or when both have
5+ letters and their edit similarity (``rapidfuzz.fuzz.ratio``) is at least 80 (typos). Words of 3 letters
or fewer ("cut", "dye") must be exact. A phrase of several words must match that many consecutive words.
The best scoring phrase wins, then the longer one, then the earlier one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

from rapidfuzz import fuzz, process

from dialogs.extract.dates import fold
from dialogs.ports import ServiceInfo

if TYPE_CHECKING:
    from dialogs.extract import ExtractContext

_WORD = re.compile(r"[^\W\d_]+")
_FUZZY_MIN_LEN = 5
_FUZZY_CUTOFF = 80.0
_PREFIX_SCORE = 90.0
_MEMO_LIMIT = 4096
_STEM = 4


def extract_service(text: str, ctx: ExtractContext) -> str | None:
    """The id of the service ``text`` names best, else ``None``."""
    if not ctx.services:
        return None
    return matcher(ctx.services).match(words(text))


def words(text: str) -> list[str]:
    """The folded words (letters only) of ``text``."""
    return _WORD.findall(fold(text))


@lru_cache(maxsize=64)
def matcher(services: tuple[ServiceInfo, ...]) -> ServiceMatcher:
    """The matcher for a tenant's services, built once per services tuple."""
    return ServiceMatcher(services)


class ServiceMatcher:
    def __init__(self, services: Sequence[ServiceInfo]) -> None:
        phrases: dict[tuple[str, ...], str] = {}
        for service in services:
            for name in (service.id.replace("_", " ").replace("-", " "), service.label, *service.synonyms):
                parts = tuple(words(name))
                if parts:  # a phrase of several words also matches written as one ("haircolouring")
                    phrases.setdefault(parts, service.id)
                    phrases.setdefault(("".join(parts),), service.id)
        self._by_first: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        for parts, service_id in phrases.items():
            self._by_first.setdefault(parts[0], []).append((parts, service_id))
        self._vocabulary = frozenset(w for parts in phrases for w in parts)
        self._fuzzy_vocabulary = tuple(w for w in self._vocabulary if len(w) >= _FUZZY_MIN_LEN)
        self._by_stem: dict[str, list[str]] = {}  # inflected forms share their first letters
        for word in self._vocabulary:
            if len(word) >= _STEM:
                self._by_stem.setdefault(word[:_STEM], []).append(word)
        self._memo: dict[str, dict[str, float]] = {}

    def match(self, tokens: Sequence[str]) -> str | None:
        """The service id that ``tokens`` (from :func:`words`) name best, else ``None``."""
        scores = [self._scores(t) for t in tokens]
        best: tuple[float, int, int] | None = None
        best_id: str | None = None
        for i, token_scores in enumerate(scores):
            for first in token_scores:
                for parts, service_id in self._by_first.get(first, ()):
                    window = scores[i : i + len(parts)]
                    if len(window) < len(parts) or any(w not in s for w, s in zip(parts, window, strict=True)):
                        continue
                    score = sum(s[w] for w, s in zip(parts, window, strict=True)) / len(parts)
                    key = (score, len(parts), -i)
                    if best is None or key > best:
                        best, best_id = key, service_id
        return best_id

    def _scores(self, token: str) -> dict[str, float]:
        """The vocabulary words ``token`` matches, with their scores (100 = equal)."""
        found = self._memo.get(token)
        if found is None:
            found = self._compute(token)
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[token] = found
        return found

    def _compute(self, token: str) -> dict[str, float]:
        found: dict[str, float] = {}
        if len(token) >= _FUZZY_MIN_LEN:
            for word, score, _ in process.extract(
                token, self._fuzzy_vocabulary, scorer=fuzz.ratio, score_cutoff=_FUZZY_CUTOFF, limit=None
            ):
                found[word] = score
        for word in self._by_stem.get(token[:_STEM], ()):
            if _inflected(token, word):
                found[word] = max(found.get(word, 0.0), _PREFIX_SCORE)
        if token in self._vocabulary:
            found[token] = 100.0
        return found


def _inflected(a: str, b: str) -> bool:
    """Whether ``a`` and ``b``, which share their first :data:`_STEM` letters, look like two forms of one
    word: their common prefix leaves at most two letters over on either side."""
    common = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return common >= max(len(a), len(b)) - 2
