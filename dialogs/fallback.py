"""Slot values from a :class:`~dialogs.ports.SlotFallback` (an LLM), made to look like rule-based values.

Each candidate goes through the rule extractor of its slot (phone to E.164, e-mail, name) or the format the
dialog keeps (a service id of the tenant, ``YYYY-MM-DD``, ``HH:MM``); whatever does not parse is dropped. The
engine's validators then judge the values exactly as they judge rule values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from dialogs.extract import ExtractContext, extract_email, extract_name, extract_phone
from dialogs.ports import SlotFallback, SlotQuery
from dialogs.session import Session
from dialogs.validators import parse_date, parse_time


def _service(value: str, ctx: ExtractContext) -> str | None:
    return value if any(s.id == value for s in ctx.services) else None


def _date(value: str, ctx: ExtractContext) -> str | None:
    day = parse_date(value)
    return day.isoformat() if day else None


def _time(value: str, ctx: ExtractContext) -> str | None:
    clock = parse_time(value.zfill(5))
    return f"{clock[0]:02d}:{clock[1]:02d}" if clock else None


def _name(value: str, ctx: ExtractContext) -> str | None:
    return extract_name(value, replace(ctx, expecting="name"))


NORMALISERS: Mapping[str, Callable[[str, ExtractContext], str | None]] = {
    "service": _service,
    "date": _date,
    "time": _time,
    "name": _name,
    "phone": extract_phone,
    "email": extract_email,
}


def normalise(candidates: Mapping[str, str], ctx: ExtractContext, slots: tuple[str, ...]) -> dict[str, str]:
    """The candidates that parse as values of the dialog's slots, in the dialog's formats."""
    found: dict[str, str] = {}
    for slot, raw in candidates.items():
        reader = NORMALISERS.get(slot)
        if slot in slots and reader is not None and isinstance(raw, str) and (value := reader(raw.strip(), ctx)):
            found[slot] = value
    return found


async def fallback_slots(
    fallback: SlotFallback, ctx: ExtractContext, session: Session, text: str, slots: tuple[str, ...]
) -> dict[str, str]:
    """What ``fallback`` reads in ``text``, normalised; asked only when the rules found nothing."""
    query = SlotQuery(
        tenant=session.tenant,
        conversation=session.conversation,
        text=text,
        now=ctx.now,
        slots=slots,
        expecting=ctx.expecting,
    )
    return normalise(await fallback(query), ctx, slots)
