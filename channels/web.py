"""The web chat channel: the JSON the chat page posts, and the JSON replies it reads back.

Delivery (the per-user outbox the page polls) needs Redis, so it lives in ``bot``; this module only parses and
renders.
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from channels.base import InboundMessage, MediaRef, OutboundMessage, ParseResult, Text
from channels.exceptions import BadPayload

_ID = r"^[A-Za-z0-9_.:-]+$"


class WebInbound(BaseModel):
    """What the chat page posts: typed text or a pressed button's data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: str = Field(min_length=1, max_length=64, pattern=_ID)
    text: Text = ""  # cut to MAX_TEXT, like every channel's
    button: str | None = Field(default=None, min_length=1, max_length=64)
    event_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=_ID)

    @model_validator(mode="after")
    def _something(self) -> WebInbound:
        if not self.text.strip() and self.button is None:
            raise ValueError("a message needs text or a button")
        return self


class WebButton(BaseModel):
    label: str
    data: str


class WebReply(BaseModel):
    text: str
    buttons: list[WebButton] = Field(default_factory=list)
    event_id: str = ""
    index: int = 0


def parse(tenant: str, body: bytes) -> ParseResult:
    """A page post as one message. Without an ``event_id`` (the page's retry key) the post gets a fresh one,
    so a resent post without it is processed again."""
    try:
        post = WebInbound.model_validate_json(body)
    except ValidationError as exc:
        raise BadPayload(f"web chat message: {_first_error(exc)}") from exc
    msg = InboundMessage(
        tenant=tenant,
        channel="web",
        user_id=post.user_id,
        event_id=post.event_id or uuid.uuid4().hex,
        text=post.text,
        button=post.button,
    )
    return ParseResult(messages=[msg])


def voice_message(tenant: str, user_id: str, event_id: str | None, media_id: str, mime: str) -> InboundMessage:
    """A voice note the page uploaded (kept by the server under ``media_id``)."""
    return InboundMessage(
        tenant=tenant,
        channel="web",
        user_id=user_id,
        event_id=event_id or uuid.uuid4().hex,
        voice=MediaRef(id=media_id, mime=mime),
    )


def render(msg: OutboundMessage) -> WebReply:
    return WebReply(
        text=msg.text,
        buttons=[WebButton(label=b.label, data=b.data) for b in msg.buttons],
        event_id=msg.event_id,
        index=msg.index,
    )


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]
