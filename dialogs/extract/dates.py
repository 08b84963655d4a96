"""Dates in en and ru, relative to today in the tenant's timezone; also the text helpers every extractor
shares (case folding, blanking of spans, number words, time prepositions), because dates are the lowest
layer: ``times`` builds on ``dates`` and ``contacts`` on both.

Rules (each is tested):

- A weekday alone ("Friday", "on fri", "в пятницу", "this Friday") is the first such day *after* today, 1 to 7
  days ahead: a customer who means today says "today".
- "next Friday", "в следующую пятницу", "Friday next week" is that weekday in the next calendar week
  (Mon-Sun). On Monday 23 Nov: "Friday" = 27 Nov, "next Friday" = 4 Dec, "Monday" = "next Monday" = 30 Nov.
- A day of the month alone ("on the 25th", "25 числа", "25-го") is in this month unless it has passed (or the
  month is too short), else in the next month that has it.
- A day and month without a year ("Dec 3", "3 декабря", "3/12", "03.12", always day first) is this year unless
  it has passed, else next year. An explicit year is kept as written.
- "dd.mm" right after "at" / "в" ("at 10.05") is a time, not a date; so is every "dd.mm" when a time was
  asked for.
- The first date mentioned wins.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dialogs.extract import ExtractContext


def fold(text: str) -> str:
    """Lower-case ``text`` (ё -> е) keeping its length, so offsets found in the result index ``text`` too."""
    low = text.lower()
    if len(low) != len(text):  # a few characters (e.g. "İ") lower-case to two
        low = "".join(ch.lower()[:1] for ch in text)
    return low.replace("ё", "е")


def blank(text: str, spans: Iterable[tuple[int, int]]) -> str:
    """``text`` with each span replaced by spaces, so later extractors skip what earlier ones took."""
    chars = list(text)
    for start, end in spans:
        chars[start:end] = " " * (end - start)
    return "".join(chars)


def alternation(words: Iterable[str]) -> str:
    """A regex alternation of ``words``, longest first so that "одиннадцать" is tried before "один"."""
    return "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in sorted(set(words), key=len, reverse=True))


_EN_NUMBERS = "one two three four five six seven eight nine ten eleven twelve"
NUMBER_WORDS: Mapping[str, int] = {
    **dict(zip(_EN_NUMBERS.split(), range(1, 13), strict=True)),
    **{
        w: n
        for n, forms in enumerate(
            (
                "один одного одному одну одна",
                "два две двух двум",
                "три трех трем",
                "четыре четырех четырем",
                "пять пяти",
                "шесть шести",
                "семь семи",
                "восемь восьми",
                "девять девяти",
                "десять десяти",
                "одиннадцать одиннадцати",
                "двенадцать двенадцати",
            ),
            start=1,
        )
        for w in forms.split()
    },
}

# Words right before a time that say how it bounds the booking; ``times`` reads the groups, ``dates`` only
# asks whether a "dd.mm" follows one of the "at" words.
TIME_PREPOSITION = re.compile(
    r"(?<!\w)(?:"
    r"(?P<after>after|later\s+than|no\s+earlier\s+than|not\s+earlier\s+than|not\s+before|from"
    r"|после|позже|позднее|не\s+раньше|не\s+ранее|с)"
    r"|(?P<before>before|earlier\s+than|no\s+later\s+than|not\s+later\s+than|not\s+after|until|till|til|up\s+to"
    r"|до|раньше|не\s+позже|не\s+позднее)"
    r"|(?P<at>at|@|around|about|approximately|к|в|во|около|примерно|ровно)"
    r")\s*$"
)


def preposition_before(folded: str, start: int) -> re.Match[str] | None:
    """The time preposition that ends right before ``start`` in ``folded`` text, if any."""
    return TIME_PREPOSITION.search(folded, max(0, start - 24), start)


_MONTHS: Mapping[str, int] = {
    form: n
    for n, forms in enumerate(
        (
            "january jan январь января январе янв",
            "february feb февраль февраля феврале фев",
            "march mar март марта марте мар",
            "april apr апрель апреля апреле апр",
            "may май мая мае",
            "june jun июнь июня июне июн",
            "july jul июль июля июле июл",
            "august aug август августа августе авг",
            "september sept sep сентябрь сентября сентябре сент сен",
            "october oct октябрь октября октябре окт",
            "november nov ноябрь ноября ноябре нояб ноя",
            "december dec декабрь декабря декабре дек",
        ),
        start=1,
    )
    for form in forms.split()
}

_WEEKDAYS: Mapping[str, int] = {
    form: n
    for n, forms in enumerate(
        (
            "monday mondays понедельник понедельника понедельнику",
            "tuesday tuesdays вторник вторника вторнику",
            "wednesday wednesdays среда среду среды среде",
            "thursday thursdays четверг четверга четвергу",
            "friday fridays пятница пятницу пятницы пятнице",
            "saturday saturdays суббота субботу субботы субботе",
            "sunday sundays воскресенье воскресенья воскресенью",
        )
    )
    for form in forms.split()
}
# Abbreviations are ordinary words too ("sat", "sun", "ср"): they count only after a preposition or modifier,
# or as the whole message.
_WEEKDAY_ABBREVIATIONS: Mapping[str, int] = {
    form: n
    for n, forms in enumerate(("mon пн", "tue tues вт", "wed ср", "thu thur thurs чт", "fri пт", "sat сб", "sun вс"))
    for form in forms.split()
}

_RELATIVE: Mapping[str, int] = {
    **dict.fromkeys(("today", "tonight", "this morning", "this afternoon", "this evening", "сегодня"), 0),
    **dict.fromkeys(("tomorrow", "tomorow", "tommorow", "tommorrow", "tmrw", "tmr", "2moro", "завтра"), 1),
    **dict.fromkeys(("day after tomorrow", "the day after tomorrow", "overmorrow", "послезавтра", "после завтра"), 2),
}

_COUNT_WORDS: Mapping[str, int] = {
    **NUMBER_WORDS,
    **dict.fromkeys(("a", "an"), 1),
    **dict.fromkeys(("a couple of", "couple of", "пару", "пара"), 2),
}
_UNIT_DAYS: Mapping[str, int] = {
    **dict.fromkeys(("day", "days", "день", "дня", "дней", "сутки"), 1),
    **dict.fromkeys(("week", "weeks", "неделю", "недели", "недель", "неделя"), 7),
    "fortnight": 14,
}

_NOT_BEFORE_NUMBER = r"(?<![\w.:/+\-£$€₽])"
_DAY = r"(?P<d>\d{1,2})(?:st|nd|rd|th|-?(?:го|ое|е))?"
_YEAR = r"(?:,?\s+(?P<y>\d{4})(?!\d)(?:\s*(?:года|год|г\.?)(?!\w))?)?"
_MONTH = rf"(?P<mon>{alternation(_MONTHS)})\.?(?!\w)"

_ISO = re.compile(rf"{_NOT_BEFORE_NUMBER}(?P<y>\d{{4}})-(?P<m>\d{{1,2}})-(?P<d>\d{{1,2}})(?!\w|[-.:/]\d)")
_NUMERIC = re.compile(
    rf"{_NOT_BEFORE_NUMBER}(?P<d>\d{{1,2}})(?P<sep>[./])(?P<m>\d{{1,2}})"
    r"(?:(?P=sep)(?P<y>\d{4}|\d{2}))?(?!\w|[.:/]\d)"
)
_DAY_MONTH = re.compile(rf"{_NOT_BEFORE_NUMBER}(?:the\s+)?{_DAY}(?:\s+of)?\s+{_MONTH}{_YEAR}")
_MONTH_DAY = re.compile(rf"(?<!\w){_MONTH}\s+(?:the\s+)?{_DAY}(?!\w)(?!\s*(?:[ap]\.?m\b|[:.]\d)){_YEAR}")
_ORDINAL = re.compile(
    rf"{_NOT_BEFORE_NUMBER}(?:(?:on\s+)?the\s+)?(?P<d>\d{{1,2}})(?:st|nd|rd|th)(?!\w)"
    rf"|{_NOT_BEFORE_NUMBER}(?P<d2>\d{{1,2}})(?:-?(?:го|ое|е))?\s+числа(?!\w)"
    rf"|{_NOT_BEFORE_NUMBER}(?P<d3>\d{{1,2}})-?(?:го|ое|е)(?!\w)"
)
# "a fortnight from today", "two weeks from now", "3 days later": a count of days from today (never today)
_DAYS_FROM = re.compile(
    rf"(?<!\w)(?:(?P<n>\d{{1,3}}|{alternation(_COUNT_WORDS)})\s+)?(?P<unit>{alternation(_UNIT_DAYS)})\s+"
    r"(?:from\s+(?:today|now)|later|time|спустя)(?!\w)"
)
# Russian ordinals spelled out: "двадцать пятого ноября" = 25 November
_RU_DAY_WORDS = (
    "первого второго третьего четвертого пятого шестого седьмого восьмого девятого десятого одиннадцатого "
    "двенадцатого тринадцатого четырнадцатого пятнадцатого шестнадцатого семнадцатого восемнадцатого "
    "девятнадцатого двадцатого"
)
_RU_DAY_ORDINALS: Mapping[str, int] = {w: n for n, w in enumerate(_RU_DAY_WORDS.split(), start=1)}
_WORDY_DAY_MONTH = re.compile(
    rf"(?<!\w)(?:(?P<tens>двадцать|тридцать)\s+)?(?P<ord>{alternation(_RU_DAY_ORDINALS)})\s+{_MONTH}{_YEAR}"
)
_RELATIVE_RE = re.compile(rf"(?<!\w)(?P<rel>{alternation(_RELATIVE)})(?!\w)")
_IN_DAYS = re.compile(
    rf"(?<!\w)(?:in|через)\s+(?:(?P<n>\d{{1,3}}|{alternation(_COUNT_WORDS)})\s+)?"
    rf"(?P<unit>{alternation(_UNIT_DAYS)})(?!\w)"
)
_WEEKDAY = re.compile(
    r"(?<!\w)(?P<prep>(?:on|в|во|на)\s+)?"
    r"(?:(?P<next>next|следующ(?:ий|ую|ее|ей|его))\s+|(?P<this>this(?:\s+coming)?|coming|эт(?:от|у|о|ой)"
    r"|ближайш(?:ий|ую|ее|ей|его))\s+)?"
    rf"(?P<wd>{alternation({**_WEEKDAYS, **_WEEKDAY_ABBREVIATIONS})})\.?(?!\w)"
    r"(?:\s+(?P<nextweek>next\s+week|на\s+следующей\s+неделе)|\s+(?:this\s+week|на\s+этой\s+неделе))?"
)


@dataclass(frozen=True)
class DateHit:
    """A date found in a text: ``text[start:end]`` says ``value``. ``wordy`` hits ("tomorrow") hold no number
    that a time could be confused with."""

    start: int
    end: int
    value: date
    wordy: bool = False


def extract_date(text: str, ctx: ExtractContext) -> str | None:
    """The first date in ``text`` as ``YYYY-MM-DD`` (rules in the module docstring), else ``None``."""
    hits = find_dates(fold(text), ctx)
    return hits[0].value.isoformat() if hits else None


def find_dates(folded: str, ctx: ExtractContext) -> list[DateHit]:
    """Every date in ``folded`` text (see :func:`fold`), in order, none overlapping."""
    candidates = sorted(_candidates(folded, ctx), key=lambda h: (h.start, h.start - h.end))
    hits: list[DateHit] = []
    for hit in candidates:
        if not hits or hit.start >= hits[-1].end:
            hits.append(hit)
    return hits


def _candidates(folded: str, ctx: ExtractContext) -> Iterator[DateHit]:
    today: date = ctx.today
    for m in _RELATIVE_RE.finditer(folded):
        rel = re.sub(r"\s+", " ", m["rel"])
        yield DateHit(m.start(), m.end(), today + timedelta(days=_RELATIVE[rel]), wordy=True)
    for m in itertools.chain(_IN_DAYS.finditer(folded), _DAYS_FROM.finditer(folded)):
        days = _in_days(m)
        if days is not None:
            yield DateHit(m.start(), m.end(), today + timedelta(days=days))
    for m in _WEEKDAY.finditer(folded):
        if value := _weekday(m, today, whole=_is_whole(folded, m)):
            yield DateHit(m.start(), m.end(), value, wordy=True)
    for m in _ISO.finditer(folded):
        yield from _hit(m, _make(int(m["y"]), int(m["m"]), int(m["d"])))
    for m in _NUMERIC.finditer(folded):
        if m["sep"] == "." and (ctx.expecting == "time" or _after_at(folded, m.start())):
            continue
        yield from _hit(m, _day_month(today, int(m["d"]), int(m["m"]), m["y"]))
    for regex in (_DAY_MONTH, _MONTH_DAY):
        for m in regex.finditer(folded):
            yield from _hit(m, _day_month(today, int(m["d"]), _MONTHS[m["mon"]], m["y"]))
    for m in _WORDY_DAY_MONTH.finditer(folded):
        day = _RU_DAY_ORDINALS[m["ord"]] + {"двадцать": 20, "тридцать": 30}.get(m["tens"] or "", 0)
        yield from _hit(m, _day_month(today, day, _MONTHS[m["mon"]], m["y"]))
    for m in _ORDINAL.finditer(folded):
        yield from _hit(m, _day_only(today, int(m["d"] or m["d2"] or m["d3"])))


def _hit(m: re.Match[str], value: date | None) -> Iterator[DateHit]:
    if value is not None:
        yield DateHit(m.start(), m.end(), value)


def _is_whole(folded: str, m: re.Match[str]) -> bool:
    return not folded[: m.start()].strip() and not folded[m.end() :].strip(" .,!?")


def _after_at(folded: str, start: int) -> bool:
    prep = preposition_before(folded, start)
    return prep is not None and prep["at"] is not None


def _in_days(m: re.Match[str]) -> int | None:
    unit = _UNIT_DAYS[m["unit"]]
    if m["n"] is None:  # "через неделю", "in a fortnight"; "через день" is too vague to guess
        return unit if unit > 1 else None
    count = int(m["n"]) if m["n"].isdigit() else _COUNT_WORDS[re.sub(r"\s+", " ", m["n"])]
    return count * unit if count * unit <= 366 else None


def _weekday(m: re.Match[str], today: date, *, whole: bool) -> date | None:
    word = m["wd"]
    if word in _WEEKDAY_ABBREVIATIONS and not (m["prep"] or m["next"] or m["this"] or whole):
        return None
    weekday = _WEEKDAYS.get(word, _WEEKDAY_ABBREVIATIONS.get(word, 0))
    if m["next"] or m["nextweek"]:
        monday = today - timedelta(days=today.weekday())
        return monday + timedelta(days=7 + weekday)
    return today + timedelta(days=(weekday - today.weekday() - 1) % 7 + 1)


def _make(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _day_month(today: date, day: int, month: int, year: str | None) -> date | None:
    if year is not None:
        return _make(int(year) + (2000 if len(year) == 2 else 0), month, day)
    # this year unless past; 29 Feb rolls on to the next leap year
    years = range(today.year, today.year + 9)
    return next((d for y in years if (d := _make(y, month, day)) is not None and d >= today), None)


def _day_only(today: date, day: int) -> date | None:
    year, month = today.year, today.month
    for _ in range(13):
        value = _make(year, month, day)
        if value is not None and value >= today:
            return value
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return None
