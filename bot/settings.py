"""The configuration schema: ``config.yaml`` (+ environment) loaded into pydantic models.

Loading, ``${VAR}`` interpolation and ``file:line`` error reporting live in :mod:`bot.config`; this module is
only the shape, so that every part of ``bot`` reads one typed object.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from itertools import pairwise
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from channels.settings import TelegramSettings, VKSettings, WhatsAppSettings

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-(?:([01]\d|2[0-3]):([0-5]\d)|(24):(00))$")


def did_you_mean(word: str, options: Iterable[str], *, else_list: bool = True) -> str:
    """`` (did you mean 'x'?)`` for the closest option, else all of them (unless ``else_list`` is off)."""
    choices = sorted(options)
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (expected one of: {', '.join(choices)})" if else_list and choices else ""


def hours_range(value: str) -> tuple[int, int]:
    """``"HH:MM-HH:MM"`` as (start, end) minutes after midnight; ``24:00`` is allowed as an end."""
    match = _RANGE.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not HH:MM-HH:MM")
    h1, m1, h2, m2, h24, m24 = match.groups()
    return int(h1) * 60 + int(m1), int(h2 or h24) * 60 + int(m2 or m24)


def _weekday(value: str) -> str:
    if value not in WEEKDAYS:
        raise ValueError(f"unknown weekday {value!r}{did_you_mean(value, WEEKDAYS)}")
    return value


def _opening(value: str) -> str:
    start, end = hours_range(value)
    if end <= start:
        raise ValueError(f"{value!r} ends before it starts")
    return value


def _no_overlap(ranges: list[str]) -> list[str]:
    ordered = sorted(ranges, key=hours_range)
    for before, after in pairwise(ordered):
        if hours_range(after)[0] < hours_range(before)[1]:
            raise ValueError(f"{after!r} overlaps {before!r}")
    return ranges


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        hint = did_you_mean(value, available_timezones(), else_list=False)
        raise ValueError(f"unknown timezone {value!r}{hint}") from None
    return value


def _matching(pattern: str, rule: str) -> AfterValidator:
    """A validator that a whole string matches ``pattern``, whose error says the ``rule`` in words."""
    regex = re.compile(pattern)

    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(f"{value!r} is invalid: {rule}")
        return value

    return AfterValidator(check)


# Tenant ids go into webhook URLs and Redis keys (``bb:{tenant}:...``), so no ':', '/', '*' or spaces.
TenantId = Annotated[str, _matching(r"[A-Za-z0-9][A-Za-z0-9_-]*", "use letters, digits, '-' and '_'")]
ServiceId = Annotated[str, _matching(r"[a-z0-9_-]+", "use lowercase letters, digits, '-' and '_'")]
CountryCode = Annotated[str, _matching(r"[A-Z]{2}", "use a two-letter country code in capitals, like GB")]
Weekday = Annotated[str, AfterValidator(_weekday)]
DayHours = Annotated[list[Annotated[str, AfterValidator(_opening)]], AfterValidator(_no_overlap)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServiceConfig(Model):
    id: ServiceId
    label: str
    minutes: int = Field(gt=0, le=24 * 60)
    synonyms: list[str] = Field(default_factory=list)
    price: str | None = Field(default=None, description='as customers read it, e.g. "£30" or "от 1500 ₽"')
    label_acc: str | None = Field(default=None, description="Russian accusative form of the label (стрижку)")


class FaqConfig(Model):
    question: str = Field(min_length=1)
    synonyms: list[str] = Field(default_factory=list, description="other ways customers ask it")
    answer: str = Field(min_length=1)


class InfoConfig(Model):
    """What the bot may answer about the business (prices come from services[].price)."""

    address: str | None = None
    directions: str | None = Field(default=None, description="how to find us")
    payment: str | None = Field(default=None, description="payment methods")
    faq: list[FaqConfig] = Field(default_factory=list)


class HandoffConfig(Model):
    """Where a customer's request for a person goes; with neither a webhook nor a CRM nobody is promised."""

    webhook_url: str | None = Field(default=None, description="staff are notified by a JSON POST here")
    quiet_minutes: int = Field(default=120, ge=1, le=7 * 24 * 60, description="bot resumes after this silence")


_DURATION = re.compile(r"^(\d+)([mhd])$")
_UNIT_MINUTES = {"m": 1, "h": 60, "d": 24 * 60}


def duration_minutes(value: str) -> int:
    """``"24h"`` / ``"90m"`` / ``"2d"`` in minutes."""
    match = _DURATION.match(value)
    if match is None or int(match[1]) == 0:
        raise ValueError(f"{value!r} is not a duration: use a positive number with m, h or d, like 24h or 90m")
    return int(match[1]) * _UNIT_MINUTES[match[2]]


def _duration(value: str) -> str:
    duration_minutes(value)
    return value


class CalcomConfig(Model):
    """A tenant's cal.com (hosted or a self-hosted Cal.diy) account, reached through API v2."""

    api_base: Annotated[str, _matching(r"https?://[^\s/]+(/[^\s]*)?", "use an http(s) origin like https://api.cal.com")]
    api_key: str = Field(min_length=1, description="Authorization: Bearer cal_...")
    webhook_secret: str = Field(default="", description="signs POST /webhooks/calcom/<tenant>; empty: refused")
    event_types: dict[ServiceId, int] = Field(description="service id -> cal.com event type id")
    guest_email_domain: str = Field(
        default="no-email.invalid", description="attendee email <customer id>@this when the customer gave none"
    )


class BookingConfig(Model):
    backend: Literal["local", "calcom"] = "local"
    calcom: CalcomConfig | None = None
    slot_step: int = Field(default=30, gt=0, le=24 * 60, description="minutes between offered start times")
    horizon_days: int = Field(default=30, gt=0, le=366, description="how far ahead customers may book")
    availability_cache_seconds: float = Field(
        default=2.0, ge=0, le=60, description="how long free times read from the calendar are reused; 0: never"
    )


class WhatsAppTemplateConfig(Model):
    name: str = Field(min_length=1)
    language: str = Field(default="en", min_length=2)


class RemindersConfig(Model):
    before: list[Annotated[str, AfterValidator(_duration)]] = Field(
        default_factory=list, description="durations before the start (24h, 2h, 30m); [] turns reminders off"
    )
    whatsapp_template: WhatsAppTemplateConfig | None = None

    def offsets(self) -> list[int]:
        """The reminder offsets in minutes before the start, largest first, without repeats."""
        return sorted({duration_minutes(b) for b in self.before}, reverse=True)


class SlotOverride(Model):
    required: bool | None = None
    validators: list[str] | None = None


class DialogConfig(Model):
    template: str = "booking"
    texts: dict[str, str] = Field(default_factory=dict, description="overrides of the template's texts")
    slots: dict[str, SlotOverride] = Field(default_factory=dict)
    max_attempts: int = Field(default=3, ge=1, le=10)


class ChannelsConfig(Model):
    """Each channel's keys are its adapter's own settings model: one schema for config and adapter."""

    telegram: TelegramSettings | None = None
    whatsapp: WhatsAppSettings | None = None
    vk: VKSettings | None = None


class ErxesConfig(Model):
    """A tenant's erxes CRM (issue 9): customers, bookings as deals, handoff notes, the chat mirror."""

    url: Annotated[str, _matching(r"https?://[^\s/]+(/[^\s]*)?", "use http(s)://host[/path] of the gateway")]
    profile: Literal["v1", "v3"] = "v3"
    token: str = Field(min_length=1, description="the app token (v3: sk_...; v1: a JWT), sent as erxes-app-token")
    deal_stage_id: str = Field(default="", description="bookings become deals in this stage; empty: notes")
    tag_ids: list[str] = Field(default_factory=list, description="tags put on customers the bot creates")
    inbox_integration_id: str = Field(default="", description="non-empty: mirror the chat into this integration")
    brand_code: str = Field(default="", description="v1: the messenger brand code used with the integration")

    @model_validator(mode="after")
    def _mirror_needs_brand(self) -> ErxesConfig:
        if self.profile == "v1" and self.inbox_integration_id and not self.brand_code:
            raise ValueError("brand_code is required with inbox_integration_id on the v1 profile")
        return self


class CrmConfig(Model):
    erxes: ErxesConfig


class VoiceConfig(Model):
    """Speech-to-text of voice notes (global): see ``llm.stt``. The language is each tenant's locale."""

    model: str = Field(default="tiny.en", description="a packaged model name, or a CTranslate2 model directory")
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    compute_type: Literal[
        "default", "auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16",
        "bfloat16", "float32",
    ] = "int8"  # fmt: skip
    max_seconds: float = Field(default=120, gt=0, le=3600, description="longer notes are refused politely")
    max_bytes: int = Field(default=5_000_000, gt=0, le=100_000_000)
    echo: bool = Field(default=False, description='reply "I heard: ..." before answering')
    beam_size: int = Field(default=1, ge=1, le=10)
    workers: int = Field(default=1, ge=1, le=16, description="voice notes transcribed at once per process")
    cpu_threads: int = Field(default=0, ge=0, le=64, description="threads per voice note; 0: one per core, at most 4")


class TenantVoice(Model):
    enabled: bool = False
    model: str | None = Field(default=None, description="this tenant's model (default: voice.model)")


def _http_url(value: str | None) -> str | None:
    if value and not re.fullmatch(r"https?://[^\s/]+\S*", value):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value or None


HttpUrl = Annotated[str | None, AfterValidator(_http_url)]


class BudgetConfig(Model):
    """Token budgets (prompt + completion); unset: no limit of that kind. Days are in the tenant's timezone."""

    daily_tokens: int | None = Field(default=None, ge=0)
    monthly_tokens: int | None = Field(default=None, ge=0)
    customer_daily_tokens: int | None = Field(default=None, ge=0, description="per conversation and day")
    alert_webhook: HttpUrl = Field(default=None, description="POSTed at 80% and 100% of a budget")


class LLMConfig(Model):
    """The ``llm:`` block, global or per tenant; a tenant's keys override the global ones key by key
    (``budget`` too). See :func:`bot.assist.wiring.effective_llm`."""

    base_url: HttpUrl = None
    api_key: str | None = None
    model: str | None = Field(default=None, min_length=1)
    timeout_seconds: float | None = Field(default=None, gt=0, le=120)
    paraphrase: bool | None = None
    style: str | None = Field(default=None, max_length=500)
    extract: bool | None = None
    budget: BudgetConfig | None = None


class TenantConfig(Model):
    name: str
    locale: Literal["en", "ru"] = "en"
    timezone: Annotated[str, AfterValidator(_timezone)] = "UTC"
    phone_region: CountryCode = "GB"
    hours: dict[Weekday, DayHours] = Field(
        description="weekday -> ['HH:MM-HH:MM', ...] (no overlaps); a missing day is closed"
    )
    services: list[ServiceConfig] = Field(min_length=1)
    booking: BookingConfig = Field(default_factory=BookingConfig)
    reminders: RemindersConfig = Field(default_factory=RemindersConfig)
    dialog: DialogConfig = Field(default_factory=DialogConfig)
    channels: ChannelsConfig = Field(default_factory=ChannelsConfig)
    crm: CrmConfig | None = Field(default=None, description="no crm block: no CRM")
    info: InfoConfig = Field(default_factory=InfoConfig)
    handoff: HandoffConfig = Field(default_factory=HandoffConfig)
    voice: TenantVoice = Field(default_factory=TenantVoice)


    llm: LLMConfig = Field(default_factory=LLMConfig)
    staff_token: str | None = Field(
        default=None, min_length=16, description="enables /staff/<tenant>?token=...: the read-only bookings page"
    )

    @field_validator("staff_token", mode="before")
    @classmethod
    def _blank_token_is_unset(cls, value: object) -> object:
        return None if value == "" else value  # `${STAFF_TOKEN:-}` unset: no staff page


class Settings(Model):
    redis_url: str | None = Field(default=None, description="unset: an embedded Redis under data_dir")
    database_url: str | None = Field(default=None, description="unset: SQLite under data_dir")
    data_dir: str = "./var"
    session_ttl_days: int = Field(default=30, gt=0)
    voice: VoiceConfig = Field(default_factory=VoiceConfig)
    dead_letter_after_minutes: float = Field(
        default=10, gt=0, description="how long a message may keep failing before it is dead-lettered"
    )
    llm: LLMConfig = Field(default_factory=LLMConfig)
    tenants: dict[TenantId, TenantConfig] = Field(min_length=1)

    @field_validator("redis_url", "database_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `${REDIS_URL:-}` expands to "" when the variable is unset: that means "use the embedded default".
        return None if value == "" else value
