"""Inbound messages the worker gave up on (see :mod:`bot.worker`), for an operator: ``bookingbot deadletters``.

Each entry of a tenant's dead-letter list is JSON ``{"item", "error", "at"}`` where ``item`` is the inbound
message as the inbox held it. ``retry`` finishes each entry: a message whose turn was done but whose replies could
not be delivered gets those stored replies sent now (the dialog does not run twice); any other goes through the
ingest path again (without the dedupe that would drop it), its failure record cleared so it gets the full retry
window once more. An entry whose item cannot be read stays in the list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import ValidationError
from redis.asyncio import Redis

from bot import keys
from bot.exceptions import DeliveryFailed
from bot.pipeline import REPLIES
from bot.worker import Services
from channels.base import InboundMessage


@dataclass(frozen=True)
class DeadLetter:
    tenant: str
    raw: str  # the list entry as stored (LREM needs it verbatim)
    item: str
    error: str
    at: str

    @property
    def message(self) -> InboundMessage | None:
        try:
            return InboundMessage.model_validate_json(self.item)
        except ValidationError:
            return None

    def line(self) -> str:
        msg = self.message
        what = f"{msg.conversation} event {msg.event_id}: {(msg.text or '')[:60]!r}" if msg else self.item[:80]
        return f"{self.at} {self.tenant} {what} -- {self.error[:200]}"


async def dead_letters(redis: Redis, tenant: str) -> list[DeadLetter]:
    entries: list[str] = await redis.lrange(keys.deadletter(tenant), 0, -1)  # type: ignore[misc]
    letters = []
    for raw in entries:
        try:
            data = json.loads(raw)
            letters.append(DeadLetter(tenant, raw, str(data["item"]), str(data["error"]), str(data["at"])))
        except (ValueError, KeyError, TypeError):
            letters.append(DeadLetter(tenant, raw, raw, "unreadable entry", "?"))
    return letters


async def retry(services: Services, letter: DeadLetter) -> str:
    """Finish one dead letter: "re-sent" (its stored replies) or "re-queued"; "unreadable" and "still failing"
    ones are kept in the list."""
    msg, redis = letter.message, services.runtime.redis
    if msg is None:
        return "unreadable"
    stored = await redis.get(keys.replies(msg.tenant, msg.conversation, msg.event_id))
    if stored is not None:
        try:
            await services.drainer.sender.deliver(REPLIES.validate_json(stored))
        except DeliveryFailed:
            return "still failing"  # kept for another try
        outcome = "re-sent"
    else:
        await redis.delete(keys.failures(msg.tenant, msg.conversation, msg.event_id))
        await services.ingest.accept(msg, redrive=True)
        outcome = "re-queued"
    await redis.lrem(keys.deadletter(letter.tenant), 1, letter.raw)  # type: ignore[misc]
    return outcome
