"""The customer's name, phone number and email address.

- Phone: ``phonenumbers`` in the tenant's default region ("07700 900123" in GB, "8 916 123 45 67" in RU),
  only valid numbers, as E.164. Ofcom's ranges reserved for drama ("07700 900xxx") count as valid too: they
  are what demos and tests use, and no real customer has one.
- Email: the first address, domain lower-cased.
- Name: after "my name is", "call me", "меня зовут", "name:" (any case), or after "I'm", "this is", "я",
  "это" when a capitalised word follows (so "I'm free", "я хочу" are not names); or, when a name was asked
  for, the whole message if it is 1-3 name-like words. Never a stop word ("hi", "yes"), a service, a date or
  a time word. Title-cased: "john smith" -> "John Smith".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from dialogs.extract.dates import blank, find_dates, fold
from dialogs.extract.services import extract_service
from dialogs.extract.times import find_times

if TYPE_CHECKING:
    from phonenumbers import PhoneNumber

    from dialogs.extract import ExtractContext

_MIN_PHONE_DIGITS = 7
_DIGIT = re.compile(r"\d")
_FICTION_PREFIXES = ("+447700900", "+442079460", "+441632960")

_EMAIL = re.compile(
    r"(?<![\w.+-])(?P<local>[\w+-]+(?:\.[\w+-]+)*)@(?P<domain>(?:[^\W_](?:[\w-]*[^\W_])?\.)+[^\W\d_]{2,})(?![\w-])"
)

_NAME_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_STRONG_INTRO = re.compile(
    r"(?<!\w)(?:my\s+name\s+is|my\s+name['’]s|name\s+is|name\s*[:=-]|call\s+me|меня\s+зовут|зовут|мое\s+имя"
    r"|имя\s*[:=-]?)\s*"
)
_WEAK_INTRO = re.compile(r"(?<!\w)(?:i['’]?m|i\s+am|this\s+is|it['’]?s|it\s+is|here\s+is|я|это)\s+")
_NAME_FIRST = re.compile(r"^\s*[^\W\d_]+\s+(?=меня\s+зовут|зовут\s+меня)")
_MAX_NAME_WORDS = 3
_STOP_TEXT = """
    i me my mine a an the and or but so to for from at on in of with by not no yes yeah yep yup nope
    ok okay just also very really here there now then please pls plz thanks thank thx cheers hi
    hello hey hiya bye good fine great sure sorry free busy available ready late early back new
    interested looking calling trying going writing wondering booking book booked want wanted would
    like need can could will gonna wanna afraid glad happy done cancel change reschedule help menu
    start stop restart what when where who how why which am pm morning afternoon evening night week
    next this that it is are was be appointment time date name phone number email mail still again
    sir madam mr mrs ms dr customer client я мне меня мой моя мое это да нет не ок ага угу привет
    здравствуйте здрасьте добрый день вечер утро спасибо пожалуйста хочу хотел хотела хотим хотелось
    бы буду могу можно нужно надо нужна нужен тоже так уже еще тут здесь вот и а но или с в на к по
    из за от до после записаться записать запишите запись отменить отмена перенести помощь меню
    старт время дата имя телефон номер почта утра вечера дня ночи свободен свободна занят занята
    готов готова клиент снова опять как что где когда кто почему ваш ваша твой
"""
_STOP_WORDS = frozenset(_STOP_TEXT.split())


def extract_email(text: str, ctx: ExtractContext) -> str | None:
    """The first email address in ``text``, domain lower-cased, else ``None``."""
    found = find_email(text)
    return found[0] if found else None


def find_email(text: str) -> tuple[str, tuple[int, int]] | None:
    m = _EMAIL.search(text)
    return (f"{m['local']}@{m['domain'].lower()}", m.span()) if m else None


def extract_phone(text: str, ctx: ExtractContext) -> str | None:
    """The first valid phone number in ``text`` as E.164 (``ctx.default_region`` for national numbers)."""
    found = find_phone(text, ctx)
    return found[0] if found else None


def find_phone(text: str, ctx: ExtractContext) -> tuple[str, tuple[int, int]] | None:
    if len(_DIGIT.findall(text)) < _MIN_PHONE_DIGITS:  # the matcher is slow; most messages have no phone
        return None
    import phonenumbers  # ~50 ms to import: paid by the first message with a phone, not by every start-up

    leniency = phonenumbers.Leniency.POSSIBLE  # validity is checked by usable_phone, to let fiction through
    for m in phonenumbers.PhoneNumberMatcher(text, ctx.default_region, leniency=leniency):
        if e164 := usable_phone(m.number):
            return e164, (m.start, m.end)
    return None


def usable_phone(number: PhoneNumber) -> str | None:
    """``number`` as E.164 if it is valid or in a drama range (module docstring), else ``None``."""
    import phonenumbers

    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164 if phonenumbers.is_valid_number(number) or e164.startswith(_FICTION_PREFIXES) else None


def extract_name(text: str, ctx: ExtractContext) -> str | None:
    """The customer's name in ``text`` (rules in the module docstring), title-cased, else ``None``."""
    spans = [found[1] for found in (find_email(text), find_phone(text, ctx)) if found]
    return find_name(blank(text, spans), ctx)


def find_name(text: str, ctx: ExtractContext) -> str | None:
    """Like :func:`extract_name` on a text whose phone and email are already blanked out."""
    folded = fold(text)
    for intro, capitalised in ((_STRONG_INTRO, False), (_WEAK_INTRO, True)):
        for m in intro.finditer(folded):
            name = _name_at(text, m.end(), ctx, capitalised=capitalised)
            if name:
                return name
    if first := _NAME_FIRST.search(folded):  # free word order: "Анной меня зовут"
        name = _name_at(text, first.start(), ctx, capitalised=False)
        return _nominative(name) if name else None
    if ctx.expecting == "name":
        return _whole_name(text, ctx)
    return _listed_name(text, ctx)


def _listed_name(text: str, ctx: ExtractContext) -> str | None:
    """A name given as one item of a list of details: "manicure friday 3pm, Sam, 07700 900123"."""
    items = [item.strip() for item in re.split(r"[,;\n]", text)]
    if len([item for item in items if item]) < 2:
        return None
    for item in items:
        words = item.split()
        capitalised = all(w[0].isupper() and _NAME_WORD.fullmatch(w) for w in words)
        if 1 <= len(words) <= 2 and capitalised and all(_may_be_name(w, ctx) for w in words):
            return " ".join(_title(w) for w in words)
    return None


def _nominative(name: str) -> str:
    """A Russian first name in the instrumental case ("меня зовут Анной") in the nominative: Анна."""
    for ending, nominative in (("ой", "а"), ("еем", "ей"), ("ей", "я"), ("ом", "")):
        if name.endswith(ending) and len(name) > len(ending) + 2:
            return name[: -len(ending)] + nominative
    return name


def _name_at(text: str, pos: int, ctx: ExtractContext, *, capitalised: bool) -> str | None:
    """The name-like words that start at ``pos``, separated by single spaces, up to a stop word."""
    names: list[str] = []
    for word in _words_from(text, pos):
        if (capitalised and not word[0].isupper()) or not _may_be_name(word, ctx):
            break
        names.append(word)
    return " ".join(_title(w) for w in names) if names else None


def _words_from(text: str, pos: int) -> Iterator[str]:
    for _ in range(_MAX_NAME_WORDS):
        m = _NAME_WORD.match(text, pos)
        if m is None:
            return
        yield m[0]
        pos = m.end()
        if not text.startswith(" ", pos):
            return
        pos += 1


def _whole_name(text: str, ctx: ExtractContext) -> str | None:
    candidate = text.strip().strip(".,!?;:)(\"'")
    names = candidate.split()
    if not 1 <= len(names) <= _MAX_NAME_WORDS:
        return None
    if all(_NAME_WORD.fullmatch(w) and _may_be_name(w, ctx) for w in names):
        return " ".join(_title(w) for w in names)
    return None


def _may_be_name(word: str, ctx: ExtractContext) -> bool:
    folded = fold(word)
    if len(word) < 2 or folded in _STOP_WORDS:
        return False
    plain = replace(ctx, expecting=None)
    return not (extract_service(word, ctx) or find_dates(folded, plain) or find_times(word, plain))


def _title(word: str) -> str:
    """Capitalise each part: "o'brien" -> "O'Brien", "anna-maria" -> "Anna-Maria"; "McDonald" stays."""
    if word.isupper() and len(word) > 1:
        word = word.lower()
    return re.sub(r"(^|['’-])(\w)", lambda m: m[1] + m[2].upper(), word)
