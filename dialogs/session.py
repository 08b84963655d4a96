"""The per-conversation dialog state: one JSON document, versioned for optimistic concurrency."""

from __future__ import annotations

from pydantic import BaseModel, Field, ValidationError

from dialogs.exceptions import SessionError
from dialogs.model import Button

SCHEMA = 1


class Session(BaseModel):
    schema_version: int = SCHEMA
    tenant: str
    conversation: str  # "<channel>:<user id>", unique within the tenant
    customer: str  # stable customer key used for "my bookings" (bot maps channel users to customers)
    flow: str = "idle"  # which intent is running: idle | booking | cancel | reschedule | ...
    state: str = "start"
    slots: dict[str, str] = Field(default_factory=dict)
    attempts: dict[str, int] = Field(default_factory=dict)
    offered: list[Button] = Field(default_factory=list)  # buttons of the last reply, to map "2" or a label
    booking_id: str | None = None  # the booking this flow is about (booked, or chosen to cancel/reschedule)
    handoff_at: str | None = None  # handed off to a person: the customer's last message since (ISO time)
    last_event: str | None = None  # the inbound event processed last: a redriven inbox head is skipped
    version: int = 0  # bumped by the store on every save

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: str | bytes) -> Session:
        try:
            session = cls.model_validate_json(raw)
        except ValidationError as exc:
            raise SessionError(f"stored session is not valid: {exc.errors()[0]['msg']}") from exc
        if session.schema_version != SCHEMA:
            raise SessionError(f"unknown session schema {session.schema_version}")
        return session
