"""What the engine needs from the outside, as data (:class:`TenantProfile`) and ports (:class:`CalendarPort`,
the optional :class:`SlotFallback`).

``bot/`` builds a :class:`TenantProfile` from the config and passes a booking backend that satisfies
:class:`CalendarPort`; the engine only reads through it. Writes go out as effects.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field


class ServiceInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    label: str  # in the tenant's locale
    minutes: int
    synonyms: tuple[str, ...] = ()
    price: str | None = None  # as the customer reads it: "£30", "от 1500 ₽"
    label_acc: str | None = None  # Russian accusative ("стрижку") for "записаны на {service_acc}"


class FaqItem(BaseModel):
    model_config = ConfigDict(frozen=True)

    question: str
    synonyms: tuple[str, ...] = ()
    answer: str


class BusinessInfo(BaseModel):
    """What the bot may tell about the business; a question about anything else gets "I don't know"."""

    model_config = ConfigDict(frozen=True)

    address: str | None = None
    directions: str | None = None  # how to find us
    payment: str | None = None  # payment methods
    faq: tuple[FaqItem, ...] = ()


class TenantProfile(BaseModel):
    """Everything about a tenant that the dialog engine reads."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    id: str
    name: str
    locale: str  # "en" | "ru"
    timezone: str
    services: tuple[ServiceInfo, ...]
    default_region: str = "GB"  # for phone numbers without a country code
    template: str = "booking"
    texts: dict[str, str] = Field(default_factory=dict)  # per-tenant overrides of template texts
    horizon_days: int = 60  # how far ahead customers may book (the booking backend's horizon)
    hours: dict[int, tuple[str, ...]] = Field(default_factory=dict)  # weekday (0 = Monday) -> "HH:MM-HH:MM"
    info: BusinessInfo = Field(default_factory=BusinessInfo)
    handoff_reachable: bool = False  # a person is notified on a handoff (a webhook or the CRM is configured)
    handoff_quiet_minutes: int = 120  # a handed-off conversation returns to the bot after this much silence

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def service(self, service_id: str) -> ServiceInfo | None:
        return next((s for s in self.services if s.id == service_id), None)


class BookingView(BaseModel):
    """A customer's booking as the dialog shows it."""

    model_config = ConfigDict(frozen=True)

    id: str
    service: str
    start: datetime  # aware, in the tenant's timezone
    minutes: int


class CalendarPort(Protocol):
    """Read side of a booking backend, as the engine sees it."""

    async def free_slots(self, service: str, day_from: date, day_to: date, now: datetime) -> list[datetime]:
        """Free start times (aware, tenant timezone) for ``service`` on days ``day_from..day_to`` inclusive,
        ascending. Times before ``now`` are never returned."""
        ...

    async def is_open(self, day: date) -> bool:
        """Whether the business works at all on ``day`` (closed days get a different answer than full ones)."""
        ...

    async def customer_bookings(self, customer: str) -> list[BookingView]:
        """The customer's active future bookings, ascending by start."""
        ...


class SlotQuery(BaseModel):
    """A customer message in which the rules found no slot and no intent, for an optional fallback reader."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    conversation: str
    text: str
    now: datetime  # aware, in the tenant's timezone
    slots: tuple[str, ...]  # the slots the dialog has
    expecting: str | None = None  # the slot just asked for


class SlotFallback(Protocol):
    """Reads slots the rules could not (``bot/`` wires an LLM here). Values are only candidates: the engine
    normalises them like rule values and drops what does not parse; its validators then judge them."""

    async def __call__(self, query: SlotQuery) -> Mapping[str, str]: ...
