"""Slots from a message the rules could not read, by structured output (a strict JSON schema).

The schema is built from the slots asked for: ``service`` is one of the tenant's service ids, the others are
strings in the dialog's formats (date ``YYYY-MM-DD``, time ``HH:MM``), each nullable. Whatever comes back is only
a candidate: the caller passes every value through the same normalisers and validators as rule-based values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from llm.metered import CallMeta, MeteredProvider
from llm.provider import ChatMessage, ChatRequest, Completion
from llm.quota import Budget

_FORMATS = {
    "date": "the date meant, as YYYY-MM-DD",
    "time": "the time meant, as HH:MM (24 h)",
    "name": "the customer's own name, as written",
    "phone": "the phone number, as written",
    "email": "the e-mail address, as written",
}
_RULES = (
    "Read one message a customer wrote to {business}, a business that takes bookings. Today is {today} "
    "({timezone}); the assistant just asked for: {expecting}. Fill in only what the message says; use null "
    "for everything it does not say. Services: {services}."
)


class SlotAsk(BaseModel):
    model_config = ConfigDict(frozen=True)

    text: str
    business: str
    today: str  # "Monday 2026-11-23"
    timezone: str
    services: tuple[tuple[str, str], ...]  # (id, label)
    slots: tuple[str, ...]  # the slots to look for
    expecting: str | None = None


def slot_schema(ask: SlotAsk) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for slot in ask.slots:
        if slot == "service":
            ids: list[str | None] = [sid for sid, _ in ask.services]
            properties[slot] = {"type": ["string", "null"], "enum": [*ids, None], "description": "a service id"}
        else:
            properties[slot] = {"type": ["string", "null"], "description": _FORMATS.get(slot, slot)}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def extraction_request(ask: SlotAsk) -> ChatRequest:
    services = ", ".join(f"{sid} ({label})" for sid, label in ask.services)
    expecting = ask.expecting or "nothing in particular"
    rules = _RULES.format(
        business=ask.business, today=ask.today, timezone=ask.timezone, expecting=expecting, services=services
    )
    return ChatRequest(
        messages=(ChatMessage(role="system", content=rules), ChatMessage(role="user", content=ask.text)),
        max_tokens=200,
        schema_name="slots",
        json_schema=slot_schema(ask),
        temperature=0.0,
    )


def parse_slots(completion: Completion, ask: SlotAsk) -> dict[str, str] | None:
    """The non-null string values of the asked slots; None when the answer is not the schema's JSON object."""
    try:
        data = json.loads(completion.text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    ids = {sid for sid, _ in ask.services}
    found = {k: v.strip() for k, v in data.items() if k in ask.slots and isinstance(v, str) and v.strip()}
    if "service" in found and found["service"] not in ids:
        del found["service"]
    return found


async def extract_slots(
    metered: MeteredProvider, ask: SlotAsk, budgets: Sequence[Budget], meta: CallMeta
) -> dict[str, str]:
    """Candidate slot values (empty when over budget, on errors or when nothing was found)."""
    result = await metered.call(extraction_request(ask), budgets, meta, lambda c: parse_slots(c, ask))
    return result.value or {}
