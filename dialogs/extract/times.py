"""Times of day in en and ru, as ``HH:MM`` (24 h) with a mode: ``at``, ``after`` ("after 6", "после шести")
or ``before`` ("before 3pm", "до 15:00").

What counts as a time:

- a clock ("17:30", "17.30", "5:30pm"), an hour with am/pm ("5pm", "5 p.m."), an hour with a day part or unit
  ("в пять вечера", "в 10 утра", "5 o'clock", "17 часов"), words ("half past four", "quarter to five", "noon",
  "в половине пятого", "полпятого", "без четверти пять");
- an hour in digits or words after a preposition ("at 5", "after six", "в 17", "к семи", "после 6",
  "до трех");
- a bare number ("5", "17", "5.30", "five") only when it is the whole message and a time was asked for
  (``ctx.expecting == "time"``); otherwise it may be a menu choice or a day.

An hour without am/pm or a day part follows business hours: 1-7 mean afternoon (13:00-19:00), 8-11 morning,
12 noon; 13-23 and hours written with a leading zero ("07:30") are taken as written. Dates are taken out of
the text first, so "03.12", "25th" and "через 3 дня" are never times.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from dialogs.extract.dates import (
    NUMBER_WORDS,
    DateHit,
    alternation,
    blank,
    find_dates,
    fold,
    preposition_before,
)

if TYPE_CHECKING:
    from dialogs.extract import ExtractContext

Mode = Literal["at", "after", "before"]


@dataclass(frozen=True)
class TimeSpec:
    value: str  # "HH:MM", 24 h
    mode: Mode


@dataclass(frozen=True)
class TimeHit:
    start: int
    end: int
    spec: TimeSpec


_HOUR_WORDS: Mapping[str, int] = {**NUMBER_WORDS, "час": 1}
_RU_ORDINALS = (
    "первого второго третьего четвертого пятого шестого седьмого восьмого девятого десятого одиннадцатого двенадцатого"
)
_ORDINALS: Mapping[str, int] = {
    w: n
    for n, w in enumerate(
        _RU_ORDINALS.split(),
        start=1,
    )
}
_MINUTE_WORDS: Mapping[str, int] = {
    "fifteen": 15,
    "thirty": 30,
    "forty five": 45,
    "forty-five": 45,
    "пятнадцать": 15,
    "тридцать": 30,
    "сорок пять": 45,
}
_DAY_PARTS: Mapping[str, str] = {
    **dict.fromkeys(("утра", "in the morning"), "am"),
    **dict.fromkeys(("дня", "in the afternoon"), "pm"),
    **dict.fromkeys(("вечера", "in the evening", "at night", "tonight"), "pm"),
    "ночи": "night",
}

_HOUR_WORD = alternation(_HOUR_WORDS)
_SUFFIX = (
    r"(?:\s*(?P<ap>[ap])\.?m\b\.?)?"
    r"(?:\s*(?P<unit>o['’]?clock|hrs|h|ч|часов|часа|час)(?!\w))?"
    r"(?P<ish>\s?-?ish)?"
    rf"(?:\s*(?P<part>{alternation(_DAY_PARTS)})(?!\w))?"
    r"(?!\w)(?![:.]\d)(?!\s?\d)"
)
_CLOCK = re.compile(
    r"(?<![\w:./+\-£$€₽])(?:(?P<hd>\d{1,2})(?:[:.](?P<md>\d{2}))?"
    rf"|(?P<hw>{_HOUR_WORD})(?:\s+(?P<mw>{alternation(_MINUTE_WORDS)}))?)" + _SUFFIX
)
_HOUR = rf"(?P<h>\d{{1,2}}|{_HOUR_WORD})"
_ORDINAL = rf"(?P<ord>{alternation(_ORDINALS)})"
_PHRASES: tuple[tuple[re.Pattern[str], int], ...] = (  # pattern, minutes relative to the hour it names
    (re.compile(rf"(?<!\w)half\s+past\s+{_HOUR}" + _SUFFIX), 30),
    (re.compile(rf"(?<!\w)(?:a\s+)?quarter\s+(?:past|after)\s+{_HOUR}" + _SUFFIX), 15),
    (re.compile(rf"(?<!\w)(?:a\s+)?quarter\s+(?:to|till|before)\s+{_HOUR}" + _SUFFIX), -15),
    (re.compile(rf"(?<!\w)half\s+{_HOUR}" + _SUFFIX), 30),  # British "half four"
    (re.compile(rf"(?<!\w)без\s+четверти\s+{_HOUR}" + _SUFFIX), -15),
    # Russian names the hour being entered: "половина пятого" = 4:30, "четверть пятого" = 4:15
    (re.compile(rf"(?<!\w)(?:половин[аеуы]\s+|пол\s*-?\s*){_ORDINAL}" + _SUFFIX), -30),
    (re.compile(rf"(?<!\w)четверть\s+{_ORDINAL}" + _SUFFIX), -45),
    (re.compile(r"(?<!\w)(?P<noon>noon|midday|полдень|полудня)(?!\w)"), 0),
)


def extract_time(text: str, ctx: ExtractContext) -> TimeSpec | None:
    """The first time in ``text`` (rules in the module docstring), else ``None``."""
    hits = find_times(text, ctx)
    return hits[0].spec if hits else None


def extract_time_at(text: str, ctx: ExtractContext) -> str | None:
    """The first time in ``text`` that is not a bound ("at 5", not "after 5"), as ``HH:MM``."""
    return next((h.spec.value for h in find_times(text, ctx) if h.spec.mode == "at"), None)


def find_times(text: str, ctx: ExtractContext, dates: Sequence[DateHit] | None = None) -> list[TimeHit]:
    """Every time in ``text``, in order, none overlapping. The ``dates`` in it (found here unless given) are
    blanked out first, except words like "tonight" that hold no number."""
    folded = fold(text)
    dates = find_dates(folded, ctx) if dates is None else dates
    folded = blank(folded, ((h.start, h.end) for h in dates if not h.wordy))
    whole = folded.strip().rstrip(".!?")
    candidates = sorted(_candidates(folded, ctx, whole), key=lambda h: (h.start, h.start - h.end))
    hits: list[TimeHit] = []
    for hit in candidates:
        if not hits or hit.start >= hits[-1].end:
            hits.append(hit)
    return hits


def _candidates(folded: str, ctx: ExtractContext, whole: str) -> Iterator[TimeHit]:
    for m in _CLOCK.finditer(folded):
        bare = ctx.expecting == "time" and m[0] == whole
        clock = _clock(m, folded, bare=bare)
        if clock is not None:
            yield _time_hit(m, folded, clock)
    for regex, minutes in _PHRASES:
        for m in regex.finditer(folded):
            clock = _phrase(m, minutes)
            if clock is not None:
                yield _time_hit(m, folded, clock)


def _time_hit(m: re.Match[str], folded: str, clock: tuple[int, int]) -> TimeHit:
    prep = preposition_before(folded, m.start())
    mode: Mode = "after" if prep and prep["after"] else "before" if prep and prep["before"] else "at"
    return TimeHit(prep.start() if prep else m.start(), m.end(), TimeSpec(f"{clock[0]:02d}:{clock[1]:02d}", mode))


def _clock(m: re.Match[str], folded: str, *, bare: bool) -> tuple[int, int] | None:
    """(hour, minute) of a clock or hour match, or ``None`` when nothing marks it as a time."""
    marked = m["md"] or m["ap"] or m["unit"] or m["part"] or m["ish"] or preposition_before(folded, m.start())
    if not (marked or bare):
        return None
    if m["hd"] is not None:
        hour, literal = int(m["hd"]), m["hd"].startswith("0") or int(m["hd"]) > 12
        minute = int(m["md"] or 0)
    else:
        hour, literal = _HOUR_WORDS[m["hw"]], False
        minute = _MINUTE_WORDS[re.sub(r"\s+", " ", m["mw"])] if m["mw"] else 0
    return _to_24h(hour, minute, _day_part(m), literal=literal)


def _phrase(m: re.Match[str], minutes: int) -> tuple[int, int] | None:
    """(hour, minute) of "half past four", "без четверти пять", "noon"..."""
    if "noon" in m.groupdict():
        return (12, 0)
    named = _ORDINALS[m["ord"]] if "ord" in m.groupdict() else _hour_number(m["h"])
    if named is None or not 1 <= named <= 12:
        return None
    total = (named * 60 + minutes) % (12 * 60)
    hour, minute = divmod(total, 60)
    return _to_24h(hour or 12, minute, _day_part(m), literal=False)


def _hour_number(word: str) -> int | None:
    return int(word) if word.isdigit() else _HOUR_WORDS.get(word)


def _day_part(m: re.Match[str]) -> str | None:
    if m["ap"]:
        return "am" if m["ap"] == "a" else "pm"
    return _DAY_PARTS[re.sub(r"\s+", " ", m["part"])] if m["part"] else None


def _to_24h(hour: int, minute: int, part: str | None, *, literal: bool) -> tuple[int, int] | None:
    if minute > 59 or hour > 23:
        return None
    if part is not None and hour <= 12:
        hour = _with_day_part(hour, part)
    elif part is None and not literal and 1 <= hour <= 7:
        hour += 12  # business hours: "at 5" is 17:00
    return hour, minute


def _with_day_part(hour: int, part: str) -> int:
    if part == "am":
        return 0 if hour == 12 else hour
    if part == "pm":
        return hour if hour == 12 else hour + 12
    return hour + 12 if 9 <= hour < 12 else hour % 12  # "ночи": 11 ночи = 23:00, 2 ночи = 02:00


# --- windows: "in the morning", "after work", "between 3 and 5", "6 or 7" ---------------------------------


@dataclass(frozen=True)
class TimeWindow:
    """Start times the customer would take: from ``after`` (inclusive) to ``before`` (exclusive), ``HH:MM``."""

    start: int
    end: int
    after: str | None
    before: str | None


_NOT_GREETING = r"(?<!good\s)(?<!добрый\s)(?<!доброе\s)(?<!\w)"
# A part of the day, as a window of start times (the engine offers the free ones inside it).
_DAY_WINDOWS: tuple[tuple[re.Pattern[str], str | None, str | None], ...] = tuple(
    (re.compile(pattern), after, before)
    for pattern, after, before in (
        (r"(?<!\w)(?:after\s+(?:work|the\s+office|office\s+hours)|после\s+работы)(?!\w)", "17:00", None),
        (r"(?<!\w)(?:after\s+lunch|после\s+обеда)(?!\w)", "14:00", None),
        (r"(?<!\w)(?:lunch\s*time|lunch|в\s+обед|в\s+обеденное\s+время|на\s+обеде?)(?!\w)", "12:00", "14:00"),
        (r"(?<!\w)(?:late\s+afternoon|ближе\s+к\s+вечеру|к\s+вечеру|под\s+вечер)(?!\w)", "16:00", None),
        (_NOT_GREETING + r"(?:mornings?|утром|с\s+утра|поутру|утречком|до\s+обеда)(?!\w)", "00:00", "12:00"),
        (_NOT_GREETING + r"(?:afternoons?|днем|после\s+полудня)(?!\w)", "12:00", "17:00"),
        (_NOT_GREETING + r"(?:evenings?|tonight|вечером|вечерком)(?!\w)", "17:00", None),
    )
)
_BOUND = rf"(?P<{{g}}>\d{{{{1,2}}}}(?:[:.]\d{{{{2}}}})?|{_HOUR_WORD})"
_TAIL = rf"(?:\s*(?P<ap>[ap])\.?m\b\.?)?(?:\s*(?:ч|часов|часа)(?!\w))?(?:\s*(?P<part>{alternation(_DAY_PARTS)})(?!\w))?"
# Two hours the customer names: "between 3 and 5" / "с 15 до 17" are a range, "6 or 7" / "в 6 или 7" two
# candidates (both offered: the window ends an hour after the second).
_BETWEEN = re.compile(
    rf"(?<!\w)(?:between|from|с|от)\s+{_BOUND.format(g='a')}\s*(?:and|to|till|until|-|–|до|и)\s*"
    rf"{_BOUND.format(g='b')}{_TAIL}(?!\w)"
)
_EITHER = re.compile(
    rf"(?<![\w:.])(?:at\s+|в\s+)?{_BOUND.format(g='a')}\s+(?:or|или)\s+{_BOUND.format(g='b')}{_TAIL}(?!\w)"
)


def find_window(text: str) -> TimeWindow | None:
    """The window of start times ``text`` names: two hours ("between 3 and 5", "6 or 7") before a part of
    the day ("monday morning", "после обеда", "after work"), else ``None``."""
    folded = fold(text)
    for regex, extra in ((_BETWEEN, 0), (_EITHER, 60)):
        if (m := regex.search(folded)) and (window := _hours_window(m, extra)):
            return window
    for regex, after, before in _DAY_WINDOWS:
        if m := regex.search(folded):
            return TimeWindow(m.start(), m.end(), after, before)
    return None


def _hours_window(m: re.Match[str], extra: int) -> TimeWindow | None:
    part = _day_part(m)
    first, second = _bound(m["a"], part), _bound(m["b"], part)
    if first is None or second is None:
        return None
    end = second[0] * 60 + second[1] + extra
    if end <= first[0] * 60 + first[1] or end > 24 * 60:
        return None
    return TimeWindow(m.start(), m.end(), f"{first[0]:02d}:{first[1]:02d}", f"{end // 60:02d}:{end % 60:02d}")


def _bound(token: str, part: str | None) -> tuple[int, int] | None:
    hour_text, _, minute_text = token.replace(".", ":").partition(":")
    hour = _hour_number(hour_text)
    if hour is None:
        return None
    literal = hour_text.isdigit() and (hour_text.startswith("0") or hour > 12)
    return _to_24h(hour, int(minute_text or 0), part, literal=literal)
