"""Conversations handed off to a person: recorded per tenant in Redis, staff notified by a webhook, listed and
ended with ``bookingbot handoff list|resume --tenant T``.

The dialog side (the bot stepping back until resumed or quiet) is :mod:`dialogs.flows.handoff`; this module
is what reaches a person. The webhook gets a JSON POST (``HandoffNotice``); a failed POST is retried, and if it
still fails the handoff is kept with ``notified: false`` and logged as an error, so ``handoff list`` shows who
was not told. The CRM note of a handoff (erxes) is a separate effect handler in :mod:`bot.effects`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import datetime
from typing import TypeVar, cast

import httpx
from pydantic import BaseModel
from redis.asyncio import Redis

from bot import keys
from bot.sessions import SessionStore
from dialogs.schema import Template
from dialogs.session import Session

logger = logging.getLogger(__name__)
T = TypeVar("T")

ATTEMPTS = 3
BACKOFF_SECONDS = 0.5
TIMEOUT_SECONDS = 5.0


class HandoffNotice(BaseModel):
    """One open handoff: what staff are sent and what ``handoff list`` shows."""

    tenant: str
    conversation: str  # "<channel>:<user id>"
    customer: str
    reason: str  # "requested" or "attempts:<slot>"
    since: datetime
    notified: bool = False


class HandoffDesk:
    def __init__(self, redis: Redis, sessions: SessionStore, webhook_url: str | None) -> None:
        self._redis = redis
        self._sessions = sessions
        self._webhook_url = webhook_url

    async def open(self, tenant: str, session: Session, reason: str, since: datetime) -> None:
        notice = HandoffNotice(
            tenant=tenant, conversation=session.conversation, customer=session.customer, reason=reason, since=since
        )
        notice.notified = await self._notify(notice)
        await _sync(self._redis.hset(keys.handoffs(tenant), session.conversation, notice.model_dump_json()))

    async def _notify(self, notice: HandoffNotice) -> bool:
        if self._webhook_url is None:
            return False
        body = notice.model_dump_json(exclude={"notified"})
        async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS) as client:
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    response = await client.post(
                        self._webhook_url, content=body, headers={"Content-Type": "application/json"}
                    )
                    if response.is_success:
                        return True
                    problem = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                if attempt < ATTEMPTS:
                    await asyncio.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
        logger.error("handoff webhook failed after %d attempts (%s): %s", ATTEMPTS, problem, notice.conversation)
        return False

    async def open_handoffs(self, tenant: str) -> list[HandoffNotice]:
        """The tenant's conversations still with a person (the bot resumed the others: they are dropped)."""
        raw: dict[bytes, bytes] = await _sync(self._redis.hgetall(keys.handoffs(tenant)))
        notices = sorted((HandoffNotice.model_validate_json(v) for v in raw.values()), key=lambda n: n.since)
        still = []
        for notice in notices:
            session = await self._sessions.load(tenant, notice.conversation)
            if session is not None and session.handoff_at is not None:
                still.append(notice)
            else:
                await _sync(self._redis.hdel(keys.handoffs(tenant), notice.conversation))
        return still

    async def resume(self, tenant: str, conversation: str, template: Template) -> bool:
        """Give the conversation back to the bot; False when it was not handed off."""
        removed = await _sync(self._redis.hdel(keys.handoffs(tenant), conversation))
        session = await self._sessions.load(tenant, conversation)
        if session is None or session.handoff_at is None:
            return bool(removed)
        session.state = template.machine.dest(session.state, "resume")
        session.flow = template.states[session.state].flow
        session.handoff_at = None
        await self._sessions.save(session)
        return True


def _sync(reply: Awaitable[T] | T) -> Awaitable[T]:
    """redis-py types hash commands as "awaitable or not"; on the asyncio client they are awaitable."""
    return cast(Awaitable[T], reply)
