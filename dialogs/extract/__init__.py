"""Rule-based slot extractors (en, ru), relative to ``now`` in the tenant's timezone.

Each extractor takes the customer's text and an :class:`ExtractContext` and returns the slot's normalised
string value or ``None``:

- ``service``: a service id (fuzzy match on labels, ids and synonyms, typos tolerated)
- ``date``: ``YYYY-MM-DD``
- ``time``: ``HH:MM`` (24 h); ``time_after`` / ``time_before`` when the customer gave a bound ("after 6")
  or a window ("in the morning", "after work", "после обеда", "between 3 and 5", "6 or 7")
- ``name``, ``phone`` (E.164), ``email``

``expecting`` names the slot the bot just asked for: a bare "5" is a time only when a time was asked for,
a bare "John" is a name only when a name was asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from types import MappingProxyType
from zoneinfo import ZoneInfo

from dialogs.extract.contacts import (
    extract_email,
    extract_name,
    extract_phone,
    find_email,
    find_name,
    find_phone,
)
from dialogs.extract.dates import blank, extract_date, find_dates, fold
from dialogs.extract.services import extract_service
from dialogs.extract.times import TimeSpec, TimeWindow, extract_time, extract_time_at, find_times, find_window
from dialogs.ports import ServiceInfo

__all__ = [
    "EXTRACTORS",
    "ExtractContext",
    "TimeSpec",
    "extract_all",
    "extract_date",
    "extract_email",
    "extract_name",
    "extract_phone",
    "extract_service",
    "extract_time",
]


@dataclass(frozen=True)
class ExtractContext:
    now: datetime  # aware
    tz: ZoneInfo
    locale: str
    services: tuple[ServiceInfo, ...] = ()
    default_region: str = "GB"
    expecting: str | None = None

    @property
    def today(self) -> date:
        return self.now.astimezone(self.tz).date()


_TIME_KEYS: Mapping[str, str] = {"at": "time", "after": "time_after", "before": "time_before"}


def extract_all(text: str, ctx: ExtractContext) -> dict[str, str]:
    """Every slot found in ``text``: keys ``service``, ``date``, ``time`` / ``time_after`` /
    ``time_before``, ``name``, ``phone``, ``email``; absent keys were not found. Email and phone are taken out
    of the text first so that their digits are never read as a date or time."""
    contacts: dict[str, str] = {}
    spans: list[tuple[int, int]] = []
    if email := find_email(text):
        contacts["email"], span = email
        spans.append(span)
    if phone := find_phone(blank(text, spans), ctx):
        contacts["phone"], span = phone
        spans.append(span)
    rest = blank(text, spans)
    found: dict[str, str] = {}
    if service := extract_service(rest, ctx):
        found["service"] = service
    dates = find_dates(fold(rest), ctx)
    if dates:
        found["date"] = dates[0].value.isoformat()
    hits = find_times(rest, ctx, dates)
    window = find_window(rest)
    if window is not None and not any(h.start <= window.start and window.end <= h.end for h in hits):
        # "monday morning", "6 or 7": a window of start times (unless it is a clock's "in the morning")
        hits = [h for h in hits if h.end <= window.start or h.start >= window.end]
        found.update(_window_hints(window))
    for hit in hits:
        found.setdefault(_TIME_KEYS[hit.spec.mode], hit.spec.value)
    if name := find_name(rest, ctx):
        found["name"] = name
    return found | contacts


def _window_hints(window: TimeWindow) -> dict[str, str]:
    bounds = {"time_after": window.after, "time_before": window.before}
    return {key: value for key, value in bounds.items() if value is not None}


EXTRACTORS: Mapping[str, Callable[[str, ExtractContext], str | None]] = MappingProxyType(
    {
        "service": extract_service,
        "date": extract_date,
        "time": extract_time_at,  # bounds ("after 6") come from extract_time
        "name": extract_name,
        "phone": extract_phone,
        "email": extract_email,
    }
)
