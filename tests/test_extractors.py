"""Rule-based slot extractors, table-driven. The clock is frozen on Monday 2026-11-23 09:00 UTC."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from dialogs.extract import (
    EXTRACTORS,
    ExtractContext,
    TimeSpec,
    extract_all,
    extract_date,
    extract_email,
    extract_name,
    extract_phone,
    extract_service,
    extract_time,
)
from dialogs.ports import ServiceInfo

NOW = datetime.fromisoformat("2026-11-23T09:00:00+00:00")  # a Monday
EN = ExtractContext(
    now=NOW,
    tz=ZoneInfo("Europe/London"),
    locale="en",
    services=(
        ServiceInfo(id="haircut", label="Haircut", minutes=60, synonyms=("hair cut", "trim", "cut")),
        ServiceInfo(id="manicure", label="Manicure", minutes=45, synonyms=("nails",)),
        ServiceInfo(id="colouring", label="Hair colouring", minutes=120, synonyms=("colour", "color", "dye")),
    ),
    default_region="GB",
)
RU = ExtractContext(
    now=NOW,
    tz=ZoneInfo("Europe/Moscow"),
    locale="ru",
    services=(
        ServiceInfo(id="haircut", label="Стрижка", minutes=60, synonyms=("подстричься", "постричься")),
        ServiceInfo(id="manicure", label="Маникюр", minutes=45, synonyms=("ногти",)),
        ServiceInfo(id="colouring", label="Окрашивание", minutes=120, synonyms=("покрасить", "окраска")),
    ),
    default_region="RU",
)
CTX = {"en": EN, "ru": RU}


def ctx(locale: str, expecting: str | None = None) -> ExtractContext:
    return replace(CTX[locale], expecting=expecting)


DATES = [
    ("en", "today", "2026-11-23"),
    ("en", "tomorrow please", "2026-11-24"),
    ("en", "tmrw", "2026-11-24"),
    ("en", "the day after tomorrow", "2026-11-25"),
    # a bare weekday is the first one after today; "next X" is X of next calendar week
    ("en", "Friday", "2026-11-27"),
    ("en", "on fri", "2026-11-27"),
    ("en", "this Friday", "2026-11-27"),
    ("en", "next Friday", "2026-12-04"),
    ("en", "Friday next week", "2026-12-04"),
    ("en", "Monday", "2026-11-30"),
    ("en", "next Monday", "2026-11-30"),
    ("en", "next Tuesday", "2026-12-01"),
    ("en", "Sunday", "2026-11-29"),
    ("en", "wed", "2026-11-25"),
    ("en", "on the 25th", "2026-11-25"),
    ("en", "the 23rd", "2026-11-23"),
    ("en", "on the 20th", "2026-12-20"),
    ("en", "on the 31st", "2026-12-31"),
    ("en", "Dec 3", "2026-12-03"),
    ("en", "3 December", "2026-12-03"),
    ("en", "December 3rd", "2026-12-03"),
    ("en", "the 3rd of Dec", "2026-12-03"),
    ("en", "3/12", "2026-12-03"),
    ("en", "03.12", "2026-12-03"),
    ("en", "2026-12-03", "2026-12-03"),
    ("en", "25.12.2026", "2026-12-25"),
    ("en", "2025-01-01", "2025-01-01"),  # an explicit year is kept, even in the past
    ("en", "3 Jan", "2027-01-03"),
    ("en", "Nov 20", "2027-11-20"),
    ("en", "29 Feb", "2028-02-29"),
    ("en", "in 3 days", "2026-11-26"),
    ("en", "in two weeks", "2026-12-07"),
    ("en", "in a week", "2026-11-30"),
    ("ru", "сегодня", "2026-11-23"),
    ("ru", "Завтра", "2026-11-24"),
    ("ru", "послезавтра", "2026-11-25"),
    ("ru", "в пятницу", "2026-11-27"),
    ("ru", "в следующую пятницу", "2026-12-04"),
    ("ru", "пятница", "2026-11-27"),
    ("ru", "в субботу", "2026-11-28"),
    ("ru", "в понедельник", "2026-11-30"),
    ("ru", "в следующий вторник", "2026-12-01"),
    ("ru", "в среду", "2026-11-25"),
    ("ru", "в воскресенье", "2026-11-29"),
    ("ru", "3 декабря", "2026-12-03"),
    ("ru", "3-го декабря", "2026-12-03"),
    ("ru", "25 числа", "2026-11-25"),
    ("ru", "на 25-е", "2026-11-25"),
    ("ru", "5 января", "2027-01-05"),
    ("ru", "через 3 дня", "2026-11-26"),
    ("ru", "через три дня", "2026-11-26"),
    ("ru", "через неделю", "2026-11-30"),
    ("ru", "через 2 недели", "2026-12-07"),
    # no date
    ("en", "31 Nov", None),
    ("en", "12/31", None),  # day first: month 31 does not exist
    ("en", "I sat down in the sun", None),
    ("en", "I may come", None),
    ("en", "17:30", None),
    ("en", "at 10.05", None),  # a time after "at"
    ("ru", "в 3 дня", None),  # 15:00, not "in 3 days"
    ("en", "+44 7700 900123", None),
    ("ru", "8 916 123 45 67", None),
]


@pytest.mark.parametrize(("locale", "text", "expected"), DATES)
def test_date(locale: str, text: str, expected: str | None) -> None:
    assert extract_date(text, ctx(locale)) == expected


def test_date_is_relative_to_the_tenants_timezone() -> None:
    late = replace(RU, now=datetime.fromisoformat("2026-11-23T22:30:00+00:00"))  # already Tuesday in Moscow
    assert extract_date("завтра", late) == "2026-11-25"
    assert extract_date("tomorrow", replace(EN, now=late.now)) == "2026-11-24"


def test_dotted_date_is_a_time_when_a_time_was_asked_for() -> None:
    assert extract_date("10.12", ctx("en")) == "2026-12-10"
    assert extract_date("10.12", ctx("en", "time")) is None
    assert extract_time("10.12", ctx("en", "time")) == TimeSpec("10:12", "at")
    assert extract_time("10.12", ctx("en")) is None


TIMES = [
    ("en", "5pm", None, TimeSpec("17:00", "at")),
    ("en", "5 pm", None, TimeSpec("17:00", "at")),
    ("en", "7am", None, TimeSpec("07:00", "at")),
    ("en", "12am", None, TimeSpec("00:00", "at")),
    ("en", "5:30 p.m.", None, TimeSpec("17:30", "at")),
    ("en", "17:30", None, TimeSpec("17:30", "at")),
    ("en", "17.30", None, TimeSpec("17:30", "at")),
    ("en", "at 07:30", None, TimeSpec("07:30", "at")),
    # bare hours follow business hours: 1-7 afternoon, 8-11 morning, 12 noon
    ("en", "at 5", None, TimeSpec("17:00", "at")),
    ("en", "at 1", None, TimeSpec("13:00", "at")),
    ("en", "at 9", None, TimeSpec("09:00", "at")),
    ("en", "at 12", None, TimeSpec("12:00", "at")),
    ("en", "at five", None, TimeSpec("17:00", "at")),
    ("en", "at 8 in the evening", None, TimeSpec("20:00", "at")),
    ("en", "5 o'clock", None, TimeSpec("17:00", "at")),
    ("en", "half past four", None, TimeSpec("16:30", "at")),
    ("en", "half four", None, TimeSpec("16:30", "at")),
    ("en", "quarter past five", None, TimeSpec("17:15", "at")),
    ("en", "quarter to five", None, TimeSpec("16:45", "at")),
    ("en", "noon", None, TimeSpec("12:00", "at")),
    ("en", "midday", None, TimeSpec("12:00", "at")),
    ("en", "after 6", None, TimeSpec("18:00", "after")),
    ("en", "after six pm", None, TimeSpec("18:00", "after")),
    ("en", "before 3pm", None, TimeSpec("15:00", "before")),
    ("en", "no later than 4", None, TimeSpec("16:00", "before")),
    ("ru", "в 17:00", None, TimeSpec("17:00", "at")),
    ("ru", "в 17", None, TimeSpec("17:00", "at")),
    ("ru", "в пять вечера", None, TimeSpec("17:00", "at")),
    ("ru", "в 10 утра", None, TimeSpec("10:00", "at")),
    ("ru", "в 7 утра", None, TimeSpec("07:00", "at")),
    ("ru", "в 3 дня", None, TimeSpec("15:00", "at")),
    ("ru", "в час дня", None, TimeSpec("13:00", "at")),
    ("ru", "в 11 ночи", None, TimeSpec("23:00", "at")),
    ("ru", "в половине пятого", None, TimeSpec("16:30", "at")),
    ("ru", "полпятого", None, TimeSpec("16:30", "at")),
    ("ru", "без четверти пять", None, TimeSpec("16:45", "at")),
    ("ru", "в полдень", None, TimeSpec("12:00", "at")),
    ("ru", "в пять", None, TimeSpec("17:00", "at")),
    ("ru", "к семи", None, TimeSpec("19:00", "at")),
    ("ru", "в два", None, TimeSpec("14:00", "at")),
    ("ru", "после 6", None, TimeSpec("18:00", "after")),
    ("ru", "после шести", None, TimeSpec("18:00", "after")),
    ("ru", "не раньше трёх", None, TimeSpec("15:00", "after")),
    ("ru", "до 15:00", None, TimeSpec("15:00", "before")),
    ("ru", "не позже 5", None, TimeSpec("17:00", "before")),
    # a bare number is a time only when a time was asked for
    ("en", "5", "time", TimeSpec("17:00", "at")),
    ("en", "17", "time", TimeSpec("17:00", "at")),
    ("en", "5.30", "time", TimeSpec("17:30", "at")),
    ("en", "ten", "time", TimeSpec("10:00", "at")),
    ("ru", "пять", "time", TimeSpec("17:00", "at")),
    ("en", "5", None, None),
    ("en", "17", "date", None),
    ("en", "option 2", None, None),
    ("ru", "мне нужно 2 места", None, None),
    # dates, phone numbers and durations are not times
    ("en", "03.12", None, None),
    ("en", "on the 25th", None, None),
    ("en", "2026-12-03", None, None),
    ("ru", "через 3 дня", None, None),
    ("ru", "через три дня", None, None),
    ("ru", "на час", None, None),
    ("en", "call me at 07700 900123", None, None),
    ("ru", "позвоните в 8 916 123 45 67", None, None),
    ("ru", "+7 916 123-45-67", "time", None),
    ("en", "£5.30", None, None),
]


@pytest.mark.parametrize(("locale", "text", "expecting", "expected"), TIMES)
def test_time(locale: str, text: str, expecting: str | None, expected: TimeSpec | None) -> None:
    assert extract_time(text, ctx(locale, expecting)) == expected


SERVICES = [
    ("en", "haircut", "haircut"),
    ("en", "HAIRCUT", "haircut"),
    ("en", "Can I get a hiarcut?", "haircut"),
    ("en", "just a trim", "haircut"),
    ("en", "my hair cut please", "haircut"),
    ("en", "manicur", "manicure"),
    ("en", "I'd like my nails done", "manicure"),
    ("en", "Hair colouring", "colouring"),
    ("en", "hair coloring", "colouring"),
    ("en", "I want to dye my hair", "colouring"),
    ("en", "colour", "colouring"),
    ("ru", "стрижка", "haircut"),
    ("ru", "стришка", "haircut"),
    ("ru", "хочу на стрижку", "haircut"),
    ("ru", "хочу подстричься", "haircut"),
    ("ru", "маникюр", "manicure"),
    ("ru", "нет маникюра", "manicure"),
    ("ru", "ногти", "manicure"),
    ("ru", "окраска", "colouring"),
    ("ru", "окрашивание волос", "colouring"),
    ("ru", "хочу покраситься", "colouring"),
    ("ru", "haircut", "haircut"),  # ids match in every locale
    ("en", "tomorrow", None),
    ("en", "hello", None),
    ("en", "John", None),
    ("en", "cute cat", None),
    ("en", "what time do you open", None),
    ("en", "hair", None),
    ("ru", "стирка", None),
    ("ru", "здравствуйте", None),
    ("ru", "сколько стоит", None),
]


@pytest.mark.parametrize(("locale", "text", "expected"), SERVICES)
def test_service(locale: str, text: str, expected: str | None) -> None:
    assert extract_service(text, ctx(locale)) == expected


def test_service_without_services_is_none() -> None:
    assert extract_service("haircut", replace(EN, services=())) is None


PHONES = [
    ("en", "+44 7700 900123", "+447700900123"),
    ("en", "my number is 07700 900123", "+447700900123"),
    ("en", "07911 123456", "+447911123456"),
    ("en", "+7 916 123-45-67", "+79161234567"),
    ("ru", "+7 916 123-45-67", "+79161234567"),
    ("ru", "8 916 123 45 67", "+79161234567"),
    ("ru", "89161234567", "+79161234567"),
    ("en", "12345", None),
    ("en", "0123 456", None),
    ("en", "2026-12-03 17:30", None),
    ("ru", "03.12.2026 в 17.30", None),
    ("en", "25/12/2026", None),
]


@pytest.mark.parametrize(("locale", "text", "expected"), PHONES)
def test_phone(locale: str, text: str, expected: str | None) -> None:
    assert extract_phone(text, ctx(locale)) == expected


NAMES = [
    ("en", "I'm John", None, "John"),
    ("en", "I am John Smith", None, "John Smith"),
    ("en", "my name is john", None, "John"),
    ("en", "My name is john smith and I want a trim", None, "John Smith"),
    ("en", "this is Anna", None, "Anna"),
    ("en", "name: John", None, "John"),
    ("en", "call me o'brien", None, "O'Brien"),
    ("ru", "меня зовут Иван", None, "Иван"),
    ("ru", "меня зовут анна-мария", None, "Анна-Мария"),
    ("ru", "я Иван", None, "Иван"),
    ("ru", "Привет, это Мария", None, "Мария"),
    ("en", "john", "name", "John"),
    ("en", "John Smith.", "name", "John Smith"),
    ("en", "John, 07700 900123", "name", "John"),
    ("ru", "иван петров", "name", "Иван Петров"),
    ("en", "I'm free tomorrow", None, None),
    ("en", "I'm looking for a haircut", None, None),
    ("en", "I'm Sorry", None, None),
    ("ru", "я хочу на маникюр", None, None),
    ("ru", "Я Хочу на маникюр", None, None),
    ("en", "John", None, None),  # a bare word is a name only when a name was asked for
    ("en", "tomorrow", "name", None),
    ("en", "Haircut", "name", None),
    ("en", "Friday", "name", None),
    ("en", "hi", "name", None),
    ("en", "yes", "name", None),
    ("ru", "да", "name", None),
    ("en", "I want a haircut tomorrow please", "name", None),
    ("en", "John123", "name", None),
]


@pytest.mark.parametrize(("locale", "text", "expecting", "expected"), NAMES)
def test_name(locale: str, text: str, expecting: str | None, expected: str | None) -> None:
    assert extract_name(text, ctx(locale, expecting)) == expected


EMAILS = [
    ("john@example.com", "john@example.com"),
    ("mail me: John.Smith@Example.CO.UK, thanks", "John.Smith@example.co.uk"),
    ("ivan+salon@mail.ru", "ivan+salon@mail.ru"),
    ("john at example dot com", None),
    ("@example.com", None),
    ("john@localhost", None),
]


@pytest.mark.parametrize(("text", "expected"), EMAILS)
def test_email(text: str, expected: str | None) -> None:
    assert extract_email(text, EN) == expected


ALL = [
    (
        "en",
        None,
        "haircut tomorrow at 5pm, I'm John",
        {"service": "haircut", "date": "2026-11-24", "time": "17:00", "name": "John"},
    ),
    (
        "en",
        None,
        "my number is 07700 900123 and I want a trim on the 25th at 5",
        {"service": "haircut", "date": "2026-11-25", "time": "17:00", "phone": "+447700900123"},
    ),
    (
        "ru",
        None,
        "Привет, я Иван, хочу на маникюр в пятницу после 6",
        {"service": "manicure", "date": "2026-11-27", "time_after": "18:00", "name": "Иван"},
    ),
    ("ru", None, "завтра с 15 до 17", {"date": "2026-11-24", "time_after": "15:00", "time_before": "17:00"}),
    ("ru", None, "через три дня в 5", {"date": "2026-11-26", "time": "17:00"}),
    ("en", None, "03.12 at 17.30", {"date": "2026-12-03", "time": "17:30"}),
    ("en", None, "the 5th at 5", {"date": "2026-12-05", "time": "17:00"}),
    ("en", "name", "John Smith, john@Example.com", {"name": "John Smith", "email": "john@example.com"}),
    ("ru", "phone", "8 916 123 45 67", {"phone": "+79161234567"}),
    ("en", None, "Hello! How are you?", {}),
    ("en", None, "thanks so much, see you then", {}),
    ("en", None, "Can I book something?", {}),
    ("ru", None, "здравствуйте, когда у вас свободно?", {}),
    ("en", None, "", {}),
    # times of day as windows of start times (issue 11, item 2)
    ("en", None, "monday morning", {"date": "2026-11-30", "time_after": "00:00", "time_before": "12:00"}),
    ("en", None, "friday afternoon", {"date": "2026-11-27", "time_after": "12:00", "time_before": "17:00"}),
    ("en", None, "tomorrow evening", {"date": "2026-11-24", "time_after": "17:00"}),
    ("en", None, "can I come after work?", {"time_after": "17:00"}),
    ("en", None, "at lunchtime", {"time_after": "12:00", "time_before": "14:00"}),
    ("en", None, "anything in the evening, like 6 or 7?", {"time_after": "18:00", "time_before": "20:00"}),
    ("en", None, "between 3 and 5", {"time_after": "15:00", "time_before": "17:00"}),
    ("en", None, "from 10 to 12", {"time_after": "10:00", "time_before": "12:00"}),
    ("en", None, "not before 11", {"time_after": "11:00"}),
    ("en", None, "tomorrow at 10 in the morning", {"date": "2026-11-24", "time": "10:00"}),  # a clock, not a window
    ("en", None, "good morning", {}),
    ("en", None, "7ish", {"time": "19:00"}),
    ("en", None, "around 7", {"time": "19:00"}),
    ("ru", None, "после обеда", {"time_after": "14:00"}),
    ("ru", None, "вечером", {"time_after": "17:00"}),
    ("ru", None, "утром в среду", {"date": "2026-11-25", "time_after": "00:00", "time_before": "12:00"}),
    ("ru", None, "ближе к вечеру", {"time_after": "16:00"}),
    ("ru", None, "в 6 или 7 вечера", {"time_after": "18:00", "time_before": "20:00"}),
    ("ru", None, "в обед", {"time_after": "12:00", "time_before": "14:00"}),
    ("ru", None, "не раньше 11", {"time_after": "11:00"}),
    ("ru", None, "добрый вечер", {}),
    # relative and spelled-out dates: a half-understood phrase never resolves to today
    ("en", None, "a fortnight from today", {"date": "2026-12-07"}),
    ("en", None, "two weeks from now", {"date": "2026-12-07"}),
    ("ru", None, "двадцать пятого ноября", {"date": "2026-11-25"}),
    ("ru", None, "тридцать первого декабря", {"date": "2026-12-31"}),
    # a name among other details, and Russian free word order
    ("en", None, "manicure friday 3pm, Sam, 07700 900123",
     {"service": "manicure", "date": "2026-11-27", "time": "15:00", "name": "Sam", "phone": "+447700900123"}),
    ("en", None, "Friday, 5pm", {"date": "2026-11-27", "time": "17:00"}),
    ("ru", None, "Анной меня зовут", {"name": "Анна"}),
    ("ru", None, "Сергеем меня зовут", {"name": "Сергей"}),
]  # fmt: skip


@pytest.mark.parametrize(("locale", "expecting", "text", "expected"), ALL)
def test_extract_all(locale: str, expecting: str | None, text: str, expected: dict[str, str]) -> None:
    assert extract_all(text, ctx(locale, expecting)) == expected


def test_registry_time_entry_gives_only_an_exact_time() -> None:
    assert set(EXTRACTORS) == {"service", "date", "time", "name", "phone", "email"}
    assert EXTRACTORS["time"]("after 6", EN) is None
    assert EXTRACTORS["time"]("after 5, ideally at 6", EN) == "18:00"
    assert EXTRACTORS["date"]("tomorrow", EN) == "2026-11-24"


@pytest.mark.parametrize(
    "text", ["", "   ", "🙂🙂", "?!.,", "İstanbul İ", "0" * 500, "at " * 300, "a" * 10_000, "\x00\n\t"]
)
def test_odd_input_never_crashes(text: str) -> None:
    for expecting in (None, "time", "name"):
        assert isinstance(extract_all(text, ctx("en", expecting)), dict)
