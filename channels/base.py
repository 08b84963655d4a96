"""What every channel adapter speaks: :class:`InboundMessage` in, :class:`OutboundMessage` out."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

# "calcom": the business calendar's webhooks ride the same inbound path (bot.booking.calcom_webhooks)
ChannelName = Literal["telegram", "whatsapp", "vk", "web", "terminal", "calcom"]


class MediaRef(BaseModel):
    """A provider's reference to a media file (a voice note), fetched later by ``Channel.fetch_media``."""

    model_config = ConfigDict(frozen=True)

    id: str
    mime: str | None = None
    url: str | None = None


class InboundMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    tenant: str
    channel: ChannelName
    user_id: str
    event_id: str  # the provider's id of this event: the dedupe key
    text: str = ""
    button: str | None = None  # the pressed button's data
    phone: str | None = None  # a shared contact
    voice: MediaRef | None = None
    sent_at: datetime | None = None
    chat_id: str | None = None  # where to answer, when it differs from user_id
    # a pressed inline button still waiting for the provider's "answered" call (``Channel.ack_button``):
    callback_id: str | None = None  # Telegram callback query id / VK message_event event_id
    callback_message: str | None = None  # id of the message carrying the pressed keyboard

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
