"""Carry out the engine's effects against the tenant's booking backend and report outcomes back.

Every effect is idempotent: a booking is keyed by (conversation, service, start), so a redriven message that
books again gets the booking it already made instead of a second one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncConnection

from bot.booking.base import Booking, BookRequest
from bot.exceptions import BackendUnavailable, BookingNotFound, SlotTaken
from bot.messagelog import MessageLog
from bot.runtime import Tenant
from dialogs.model import (
    BookSlot,
    CancelBooking,
    Effect,
    EffectOutcome,
    Handoff,
    RescheduleBooking,
    SyncCustomer,
)
from dialogs.session import Session

logger = logging.getLogger(__name__)


async def execute(effect: Effect, tenant: Tenant, session: Session, log: MessageLog) -> EffectOutcome | None:
    """Run one effect. Returns the outcome the dialog must react to, or ``None`` for fire-and-forget ones."""
    match effect:
        case BookSlot():
            return await _book(effect, tenant, session)
        case CancelBooking():
            return await _guarded("cancel", tenant.calendar.cancel(effect.booking_id))
        case RescheduleBooking():
            return await _guarded("reschedule", tenant.calendar.reschedule(effect.booking_id, effect.start))
        case SyncCustomer():
            await _sync_customer(effect, tenant, session, log)
            return None
        case Handoff():
            logger.warning(
                "handoff requested: tenant=%s conversation=%s reason=%s", tenant.id, session.conversation, effect.reason
            )
            if tenant.crm is not None:  # a note and a tag on the customer in the CRM, so staff see it
                await tenant.crm.handoff(session.conversation, effect.reason)
            if tenant.desk is not None:
                since = datetime.fromisoformat(session.handoff_at) if session.handoff_at else datetime.now(UTC)
                await tenant.desk.open(tenant.id, session, effect.reason, since)
            return None


async def _sync_customer(effect: SyncCustomer, tenant: Tenant, session: Session, log: MessageLog) -> None:
    """Our customer row, and (in the same transaction) the CRM outbox row that carries it to the CRM."""
    conversation = session.conversation
    crm = tenant.crm

    async def to_crm(conn: AsyncConnection) -> None:
        assert crm is not None
        await crm.customer_synced(conn, conversation, effect.name, effect.phone, effect.email)

    await log.record_customer(tenant.id, conversation, conversation.partition(":")[0],
                              name=effect.name, phone=effect.phone, email=effect.email,
                              also=to_crm if crm is not None else None)


async def _book(effect: BookSlot, tenant: Tenant, session: Session) -> EffectOutcome:
    request = BookRequest(
        key=effect.key,
        customer=session.customer,
        service=effect.service,
        start=effect.start,
        name=effect.name,
        phone=effect.phone,
        email=effect.email,
    )
    return await _guarded("book", tenant.calendar.book(request))


async def _guarded(kind: Literal["book", "cancel", "reschedule"], call: Awaitable[Booking]) -> EffectOutcome:
    """Map the backend's outcome to what the dialog understands; infrastructure errors propagate (job retry)."""
    try:
        booking = await call
    except SlotTaken:
        return EffectOutcome(effect=kind, ok=False, reason="taken")
    except BookingNotFound:
        return EffectOutcome(effect=kind, ok=False, reason="not_found")
    except BackendUnavailable:
        return EffectOutcome(effect=kind, ok=False, reason="failed")
    return EffectOutcome(effect=kind, ok=True, booking_id=booking.id)


async def mirror(tenant: Tenant, conversation: str, inbound: str | None, replies: list[str]) -> None:
    """Queue a turn's messages for the CRM's inbox mirror (a no-op unless the tenant turned it on)."""
    if tenant.crm is not None:
        lines = ([("in", inbound)] if inbound else []) + [("out", text) for text in replies]
        await tenant.crm.messages(conversation, lines)
