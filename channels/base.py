"""What every channel adapter speaks: :class:`InboundMessage` in, :class:`OutboundMessage` out."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# "calcom": the business calendar's webhooks ride the same inbound path (bot.booking.calcom_webhooks)
ChannelName = Literal["telegram", "whatsapp", "vk", "web", "terminal", "calcom"]

# Bounds on what a webhook may carry, whoever sent it. A text is cut to the longest any channel allows (the
# dialog's extractors cost time in proportion to it); ids, button data and phones longer than any provider's
# are refused (a ValidationError, which each parser turns into BadPayload).
MAX_TEXT = 4096
MAX_ID = 256
_LATEST_EPOCH_S = 2**33  # year 2242: later "sent at" times are no real time

Id = Annotated[str, Field(max_length=MAX_ID)]
Int64 = Annotated[int, Field(ge=-(2**63), lt=2**63)]  # every provider's ids and times fit


def _cut(text: str) -> str:
    return text[:MAX_TEXT]


Text = Annotated[str, AfterValidator(_cut)]


def epoch(seconds: int | None) -> datetime | None:
    """A provider's Unix time, or None when it is missing or outside any real range (never an OverflowError)."""
    if seconds is None or not 0 <= seconds < _LATEST_EPOCH_S:
        return None
    return datetime.fromtimestamp(seconds, UTC)


class MediaRef(BaseModel):
    """A provider's reference to a media file (a voice note), fetched later by ``Channel.fetch_media``."""

    model_config = ConfigDict(frozen=True)

    id: Id
    mime: Id | None = None
    url: str | None = Field(default=None, max_length=2048)


class InboundMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    tenant: str
    channel: ChannelName
    user_id: Id
    event_id: Id  # the provider's id of this event: the dedupe key
    text: Text = ""
    button: Id | None = None  # the pressed button's data
    phone: str | None = Field(default=None, max_length=64)  # a shared contact
    voice: MediaRef | None = None
    sent_at: datetime | None = None
    chat_id: Id | None = None  # where to answer, when it differs from user_id
    # a pressed inline button still waiting for the provider's "answered" call (``Channel.ack_button``):
    callback_id: Id | None = None  # Telegram callback query id / VK message_event event_id
    callback_message: Id | None = None  # id of the message carrying the pressed keyboard

    @property
    def conversation(self) -> str:
        return f"{self.channel}:{self.user_id}"


class OutButton(BaseModel):
    model_config = ConfigDict(frozen=True)

    label: str
    data: str = Field(max_length=64)


class TemplateRef(BaseModel):
    """A pre-approved message template (WhatsApp, outside its 24-hour window): body ``params`` in order; the
    message's buttons become the template's quick replies, carrying their data as payloads."""

    model_config = ConfigDict(frozen=True)

    name: str
    language: str
    params: tuple[str, ...] = ()


class OutboundMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    tenant: str
    channel: ChannelName
    user_id: str
    chat_id: str | None = None
    text: str
    buttons: tuple[OutButton, ...] = ()
    template: TemplateRef | None = None  # channels that need one send it instead of ``text`` (WhatsApp)
    event_id: str = ""  # the inbound event this answers (with ``index``: the idempotency key of the send)
    index: int = 0


class ParseResult(BaseModel):
    """What one webhook body holds: zero or more messages, and what to answer the provider with."""

    messages: list[InboundMessage] = Field(default_factory=list)
    reply: str | None = None  # response body the provider expects (VK: the confirmation string or "ok")


class Channel(Protocol):
    """One provider account (a tenant's bot). ``send`` makes one attempt; see :mod:`channels.exceptions`."""

    @property
    def name(self) -> ChannelName: ...

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Raise ``BadSignature`` unless the provider signed ``body`` for this account."""

    def parse(self, tenant: str, body: bytes) -> ParseResult:
        """Raise ``BadPayload`` on a body the provider would never send; unknown updates give no messages."""

    async def send(self, msg: OutboundMessage) -> None: ...

    async def ack_button(self, msg: InboundMessage) -> None:
        """Tell the provider a pressed button was handled (no-op where the provider needs nothing)."""

    async def fetch_media(self, ref: MediaRef) -> bytes: ...

    async def set_webhook(self, url: str) -> None:
        """Register ``url`` as this account's webhook with the provider."""

    async def aclose(self) -> None: ...


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name in any letter case (plain dicts are case-sensitive, HTTP header names are not)."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


@runtime_checkable
class Pollable(Protocol):
    """A channel whose updates can be fetched by long polling instead of a webhook (Telegram ``getUpdates``,
    VK Bots Long Poll): what ``bookingbot poll`` drives. ``offset`` is opaque to the caller: pass back what
    the last call returned, so that nothing is confirmed to the provider before it has been accepted."""

    async def delete_webhook(self) -> None:
        """Make the provider deliver to long polling (Telegram: drop the webhook; VK: enable Long Poll)."""

    async def updates(self, tenant: str, offset: Any, wait_s: int) -> tuple[list[InboundMessage], Any]: ...
