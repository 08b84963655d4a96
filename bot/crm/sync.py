"""Apply one outbox row to erxes: what each operation means there, and how a retry stays a no-op.

Idempotency, since a row may be attempted again after erxes did the work but its answer was lost (or its relay
died mid-attempt: :attr:`OutboxItem.retried`):
    - the customer is found by our ``code`` (the conversation id), then by phone, before one is created, and a
      "Duplicated code/phone" answer means "find it", never a second customer;
    - a deal's name carries our booking reference ``[bb:<id>]``; a retried booking first looks for it;
    - a note's text ends with its row's reference ``[bb:note-<row id>]``; a retried row first looks for it among
      the customer's notes (``internalNotes``);
    - a mirrored message carries no reference (staff read the chat as it was), so a retried one reads the
      visitor's latest message back (``widgetsConversations`` / ``widgetsMessages``): rows of a stream are
      delivered one at a time and in order, so a latest message that is not the last one we know we delivered,
      with this row's text, is this row's earlier attempt;
    - the handoff tag is found by name before it is created, and tagging sets the whole set (repeatable);
    - erxes ids produced by earlier rows of the stream (customer, deals, the messenger conversation, its last
      message) are read back from the outbox (:class:`Known`), so later rows reuse them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.crm.erxes import CustomerFields, ErxesClient, Message
from bot.crm.outbox import OutboxItem
from bot.exceptions import CrmDuplicate, CrmUnavailable

HANDOFF_TAG = "bookingbot: handoff"


@dataclass
class Known:
    """The erxes ids a stream's delivered rows produced."""

    customer: str | None = None
    messenger_customer: str | None = None
    conversation: str | None = None
    message: str | None = None  # the last mirrored message
    deals: dict[str, str] = field(default_factory=dict)  # booking id -> deal id

    @classmethod
    def of(cls, done: list[OutboxItem]) -> Known:
        """From delivered rows, newest first."""
        known = cls()
        for item in reversed(done):  # oldest first: later rows win
            result = item.result or {}
            known.customer = result.get("customer") or known.customer
            known.messenger_customer = result.get("messenger_customer") or known.messenger_customer
            known.conversation = result.get("conversation") or known.conversation
            known.message = result.get("message") or known.message
            if item.booking_id and result.get("deal"):
                known.deals[item.booking_id] = result["deal"]
        return known


def _reference(booking_id: str) -> str:
    return f"[bb:{booking_id[:16]}]"


def _note_reference(item: OutboxItem) -> str:
    return f"[bb:note-{item.id}]"


class ErxesSync:
    def __init__(self, client: ErxesClient) -> None:
        self.client = client
        self.config = client.config
        self._handoff_tag: str | None = None

    async def apply(self, item: OutboxItem, known: Known) -> dict[str, Any]:
        """Do the row's work; returns the erxes ids it produced or used. Raises CrmError."""
        p = item.payload
        if item.op == "message":
            return await self._message(item, known)
        fields = CustomerFields(code=item.stream, name=p.get("name"), phone=p.get("phone"), email=p.get("email"))
        customer, created = await self._customer(fields, known, retry=item.retried)
        if item.op == "customer":
            if not created:
                await self._edit(customer, fields)
            return {"customer": customer}
        if item.op == "handoff":
            return {"customer": customer, **await self._handoff(item, customer, str(p.get("reason", "")))}
        return {"customer": customer, **await self._booking(item, customer, known)}

    async def _customer(self, fields: CustomerFields, known: Known, *, retry: bool) -> tuple[str, bool]:
        """(customer id, whether this call created it)."""
        if known.customer:
            return known.customer, False
        found = await self.client.find_customer(fields.code, fields.phone)
        if found is None:
            try:
                created = await self.client.add_customer(fields)
            except CrmDuplicate:
                found = await self.client.find_customer(fields.code, fields.phone)
                if found is None:  # v1 searches an eventually consistent index: it will show up
                    raise CrmUnavailable("erxes reports the customer as existing but cannot find it yet") from None
            else:
                await self._add_tags(created, list(self.config.tag_ids))
                return created, True
        if retry:  # an earlier attempt may have created it and failed before tagging it
            await self._add_tags(found, list(self.config.tag_ids))
        return found, False

    async def _add_tags(self, customer: str, wanted: list[str]) -> None:
        """Add tags, keeping the customer's others (erxes replaces the whole set)."""
        if not wanted:
            return
        current = await self.client.customer_tags(customer)
        if any(tag not in current for tag in wanted):
            await self.client.tag_customer(customer, [*current, *(t for t in wanted if t not in current)])

    async def _edit(self, customer: str, fields: CustomerFields) -> None:
        """Keep name, phone and email current; a phone or email another customer holds is left out."""
        try:
            await self.client.edit_customer(customer, fields)
        except CrmDuplicate:
            await self.client.edit_customer(customer, CustomerFields(code=fields.code, name=fields.name))

    async def _booking(self, item: OutboxItem, customer: str, known: Known) -> dict[str, Any]:
        p = item.payload
        booking_id = str(p["booking_id"])
        start, end = datetime.fromisoformat(p["start"]), datetime.fromisoformat(p["end"])
        title = f"{p['service']} - {p['name']} {_reference(booking_id)}"
        stage = self.config.deal_stage_id
        when = f"{start:%Y-%m-%d %H:%M}-{end:%H:%M} ({start:%z})"
        texts = {
            "booking": f"Booked via the bot: {p['service']}, {when}, {p['name']} {p['phone']}",
            "cancel": f"Cancelled by the customer via the bot: {p['service']}, {when}",
            "reschedule": f"Moved by the customer via the bot: {p['service']}, now {when}",
        }
        if not stage:
            return {"note": await self._note(item, customer, texts[item.op])}
        deal = known.deals.get(booking_id)
        if deal is None and (item.retried or item.op != "booking"):
            deal = await self.client.find_deal(stage, _reference(booking_id))
        if item.op == "cancel":
            title = f"Cancelled: {title}"
        if deal is None:
            if item.op != "booking":  # the deal was never made (or removed by staff): tell them in a note
                return {"note": await self._note(item, customer, texts[item.op])}
            deal = await self.client.add_deal(title, stage, customer, start, end, texts["booking"])
        else:
            await self.client.edit_deal(deal, title, stage, start, end, texts[item.op])
        return {"deal": deal}

    async def _note(self, item: OutboxItem, customer: str, text: str) -> str:
        """The row's note on the customer: the one an earlier attempt made, else a new one."""
        reference = _note_reference(item)
        if item.retried:
            found = await self.client.find_note(customer, reference)
            if found is not None:
                return found
        return await self.client.add_note(customer, f"{text} {reference}")

    async def _handoff(self, item: OutboxItem, customer: str, reason: str) -> dict[str, Any]:
        if reason == "requested":
            text = "The customer asked to talk to a person in the chat: please reply to them."
        else:
            what = reason.partition(":")[2] or "the request"
            text = f"The bot could not understand the customer's {what} after several tries: please reply to them."
        note = await self._note(item, customer, text)
        if self._handoff_tag is None:
            self._handoff_tag = await self.client.find_or_add_tag(HANDOFF_TAG)
        await self._add_tags(customer, [self._handoff_tag])
        return {"note": note, "tag": self._handoff_tag}

    async def _message(self, item: OutboxItem, known: Known) -> dict[str, Any]:
        if not self.config.inbox_integration_id:
            return {}
        visitor = known.messenger_customer
        if visitor is None:
            visitor = await self.client.messenger_connect(item.stream, None, None)
        text = str(item.payload.get("text", ""))
        if item.payload.get("direction") == "out":
            text = f"[bot] {text}"
        earlier = await self._earlier_message(visitor, known, text) if item.retried else None
        if earlier is not None:
            conversation, message = earlier.conversation, earlier.id
        else:
            conversation, message = await self.client.insert_message(visitor, known.conversation, text)
        known.messenger_customer, known.conversation, known.message = visitor, conversation, message
        return {"messenger_customer": visitor, "conversation": conversation, "message": message}

    async def _earlier_message(self, visitor: str, known: Known, text: str) -> Message | None:
        """The message an earlier attempt of this row inserted, if it did (see the module's notes)."""
        latest = await self.client.latest_message(visitor, known.conversation)
        if latest is None or latest.id == known.message or latest.text != text:
            return None
        return latest
