"""WhatsApp Cloud API (Meta Graph API) over httpx.

In: text, interactive ``button_reply`` / ``list_reply``, template quick replies (``button``), audio (voice
notes) and shared contacts; ``statuses`` and every other message type are acknowledged and give no message.
The user is keyed by the business-scoped ``user_id`` when Meta sends one, else by the phone number
(``wa_id``).

Out: text; reply buttons (up to 3, titles up to 20 chars) or a list (up to 10 rows) chosen by the number of
options; more than 10 options become numbered text.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Mapping
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from channels.base import (
    ChannelName,
    InboundMessage,
    MediaRef,
    OutboundMessage,
    OutButton,
    ParseResult,
    epoch,
    header,
)
from channels.exceptions import (
    BadPayload,
    BadSignature,
    PermanentSendError,
    RetryLater,
    SendError,
    Unreachable,
)
from channels.render import numbered, shorten, split_text
from channels.settings import WhatsAppSettings

log = logging.getLogger(__name__)

TEXT_LIMIT = 4096
BODY_LIMIT = 1024  # body text of an interactive message
MAX_REPLY_BUTTONS, BUTTON_TITLE = 3, 20
MAX_LIST_ROWS, ROW_TITLE, ROW_DESCRIPTION = 10, 24, 72
SIGNATURE_HEADER = "X-Hub-Signature-256"

# Graph error codes that clear up by waiting: throughput / pair rate limits, "something went wrong",
# service unavailable, app-level rate limits.
_BACKOFF = {1, 2, 4, 80007, 130429, 131000, 131056, 133004}
_OUTSIDE_WINDOW = 131047  # more than 24 h since the user's last message: only templates may be sent
_UNDELIVERABLE = 131026
_PUNCTUATION = re.compile(r"[\s().-]")  # shared contacts come formatted: "+44 7700 900123"


class WhatsAppChannel:
    name: ChannelName = "whatsapp"

    def __init__(self, settings: WhatsAppSettings, *, list_button: str = "Choose", timeout: float = 10.0) -> None:
        """``list_button`` labels the button that opens a list of options (in the tenant's language)."""
        if not 1 <= len(list_button) <= BUTTON_TITLE:
            raise ValueError(f"list_button must be 1-{BUTTON_TITLE} characters")
        self.settings = settings
        self.list_button = list_button
        self.http = httpx.AsyncClient(
            base_url=f"{settings.graph_base.rstrip('/')}/{settings.graph_version}",
            headers={"Authorization": f"Bearer {settings.access_token}"},
            timeout=timeout,
        )

    def verify_subscription(self, params: Mapping[str, str]) -> str:
        """The GET handshake Meta makes when the webhook is set up: answer ``hub.challenge`` if the verify
        token is ours."""
        challenge, token = params.get("hub.challenge"), params.get("hub.verify_token")
        if params.get("hub.mode") != "subscribe" or challenge is None or token is None:
            raise BadPayload("expected hub.mode=subscribe with hub.challenge and hub.verify_token")
        if not hmac.compare_digest(token.encode(), self.settings.verify_token.encode()):
            raise BadSignature("wrong hub.verify_token")
        return challenge

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        given = header(headers, SIGNATURE_HEADER)
        if given is None:
            raise BadSignature(f"missing {SIGNATURE_HEADER} header")
        expected = "sha256=" + hmac.new(self.settings.app_secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise BadSignature(f"wrong {SIGNATURE_HEADER}")

    def parse(self, tenant: str, body: bytes) -> ParseResult:
        """Messages of this tenant's phone number; changes for other numbers of the same business account
        (Meta sends them to the same app) are skipped."""
        try:
            hook = _Webhook.model_validate_json(body)
            messages = [
                msg
                for entry in hook.entry
                for change in entry.changes
                if change.field == "messages" and change.value.phone_number_id == self.settings.phone_number_id
                for message in change.value.messages
                if (msg := _inbound(tenant, message, change.value.contacts)) is not None
            ]
        except ValidationError as exc:
            raise BadPayload(f"not a WhatsApp webhook: {exc.errors()[0]['msg']}") from exc
        return ParseResult(messages=messages)

    async def send(self, msg: OutboundMessage) -> None:
        to = msg.chat_id or msg.user_id
        envelope = {"messaging_product": "whatsapp", "recipient_type": "individual", _address(to): to}
        for payload in _payloads(msg, self.list_button):
            await self._request("POST", f"/{self.settings.phone_number_id}/messages", json=envelope | payload)

    async def ack_button(self, msg: InboundMessage) -> None:
        """WhatsApp needs no answer to a pressed button."""

    async def fetch_media(self, ref: MediaRef) -> bytes:
        """``GET /{media-id}`` gives a short-lived url, fetched with the same bearer token."""
        try:
            url = (await self._request("GET", f"/{ref.id}")).json()["url"]
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentSendError(f"Graph gave no url for media {ref.id}") from exc
        return (await self._request("GET", str(url))).content

    async def set_webhook(self, url: str) -> None:
        """Point this phone number's webhooks at ``url`` (a phone-number level override of the app's callback;
        Meta checks it with the ``hub.challenge`` handshake first)."""
        config = {"override_callback_uri": url, "verify_token": self.settings.verify_token}
        path = f"/{self.settings.phone_number_id}"
        await self._request("POST", path, json={"webhook_configuration": config})

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise whatsapp_error(exc) from exc
        if not response.is_success:
            raise whatsapp_error(response)
        return response


def whatsapp_error(failure: httpx.Response | httpx.HTTPError) -> SendError:
    """The one place Graph API and transport errors become channel errors."""
    if isinstance(failure, httpx.HTTPError):
        return RetryLater(f"WhatsApp unreachable: {failure!r}")
    code, message = _graph_error(failure)
    text = f"WhatsApp {failure.status_code} (#{code}): {message}"
    if code in _BACKOFF or failure.status_code == 429 or failure.status_code >= 500:
        return RetryLater(text)
    if code == _OUTSIDE_WINDOW:
        log.warning("not sent, outside the 24 h customer service window: %s", text)
        return PermanentSendError(text)
    if code == _UNDELIVERABLE:
        return Unreachable(text)
    return PermanentSendError(text)


def _graph_error(response: httpx.Response) -> tuple[int | None, str]:
    try:
        error = response.json()["error"]
        return int(error["code"]), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError):
        return None, response.text[:200]


def _address(to: str) -> str:
    """Business-scoped user ids ("US.1349…") go in ``recipient``, phone numbers in ``to``."""
    return "recipient" if "." in to else "to"


def _payloads(msg: OutboundMessage, list_button: str) -> list[dict[str, Any]]:
    """One request body per API call: text parts, then the interactive message carrying the last part."""
    if msg.template is not None:
        return [_template(msg)]
    interactive = _interactive(msg.buttons, list_button) if msg.buttons else None
    if interactive is None:
        text = numbered(msg.text, msg.buttons) if msg.buttons else msg.text
        return [_text(part) for part in split_text(text, TEXT_LIMIT)]
    *head, last = split_text(msg.text, TEXT_LIMIT)
    *middle, body = split_text(last, BODY_LIMIT)
    message = {"type": "interactive", "interactive": interactive | {"body": {"text": body}}}
    return [_text(part) for part in head + middle] + [message]


def _template(msg: OutboundMessage) -> dict[str, Any]:
    assert msg.template is not None
    body = {"type": "body", "parameters": [{"type": "text", "text": p} for p in msg.template.params]}
    replies = [
        {"type": "button", "sub_type": "quick_reply", "index": str(i),
         "parameters": [{"type": "payload", "payload": b.data}]}
        for i, b in enumerate(msg.buttons)
    ]  # fmt: skip
    template = {"name": msg.template.name, "language": {"code": msg.template.language}, "components": [body, *replies]}
    return {"type": "template", "template": template}


def _text(body: str) -> dict[str, Any]:
    return {"type": "text", "text": {"body": body, "preview_url": False}}


def _interactive(buttons: tuple[OutButton, ...], list_button: str) -> dict[str, Any] | None:
    if len(buttons) <= MAX_REPLY_BUTTONS and all(len(b.label) <= BUTTON_TITLE for b in buttons):
        replies = [{"type": "reply", "reply": {"id": b.data, "title": b.label}} for b in buttons]
        return {"type": "button", "action": {"buttons": replies}}
    if len(buttons) <= MAX_LIST_ROWS:
        rows = [_row(b) for b in buttons]
        return {"type": "list", "action": {"button": list_button, "sections": [{"rows": rows}]}}
    return None


def _row(button: OutButton) -> dict[str, str]:
    row = {"id": button.data, "title": shorten(button.label, ROW_TITLE)}
    if len(button.label) > ROW_TITLE:  # the full label stays readable below the cut title
        row["description"] = shorten(button.label, ROW_DESCRIPTION)
    return row


# --- the webhook, as far as we read it ------------------------------------------------------------------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Text(_Loose):
    body: str


class _Reply(_Loose):
    id: str


class _Interactive(_Loose):
    type: str
    button_reply: _Reply | None = None
    list_reply: _Reply | None = None


class _QuickReply(_Loose):
    payload: str | None = None
    text: str = ""


class _Audio(_Loose):
    id: str
    mime_type: str | None = None


class _Phone(_Loose):
    phone: str | None = None


class _Card(_Loose):
    phones: list[_Phone] = Field(default_factory=list)


class _Message(_Loose):
    id: str
    type: str
    sender: str | None = Field(default=None, alias="from")
    from_user_id: str | None = None
    timestamp: int | None = None  # any integer: epoch() ignores impossible times
    text: _Text | None = None
    interactive: _Interactive | None = None
    button: _QuickReply | None = None
    audio: _Audio | None = None
    contacts: list[_Card] = Field(default_factory=list)


class _Sender(_Loose):
    wa_id: str | None = None
    user_id: str | None = None


class _Metadata(_Loose):
    phone_number_id: str


class _Value(_Loose):
    metadata: _Metadata | None = None
    contacts: list[_Sender] = Field(default_factory=list)
    messages: list[_Message] = Field(default_factory=list)

    @property
    def phone_number_id(self) -> str | None:
        return self.metadata.phone_number_id if self.metadata else None


class _Change(_Loose):
    field: str
    value: _Value


class _Entry(_Loose):
    changes: list[_Change] = Field(default_factory=list)


class _Webhook(_Loose):
    object: Literal["whatsapp_business_account"]
    entry: list[_Entry]


def _inbound(tenant: str, message: _Message, senders: list[_Sender]) -> InboundMessage | None:
    content = _content(message)
    who = _who(message, senders)
    if content is None or who is None:
        return None
    user_id, phone = who
    return InboundMessage(
        tenant=tenant,
        channel="whatsapp",
        user_id=user_id,
        chat_id=phone if phone != user_id else None,
        event_id=message.id,
        sent_at=epoch(message.timestamp),
        **content,
    )


def _who(message: _Message, senders: list[_Sender]) -> tuple[str, str | None] | None:
    """(user key, phone number if known): the business-scoped id wins, the phone is where we answer."""
    sender = next((s for s in senders if message.sender and s.wa_id == message.sender), None)
    if sender is None and len(senders) == 1:
        sender = senders[0]
    bsuid = message.from_user_id or (sender.user_id if sender else None)
    phone = message.sender or (sender.wa_id if sender else None)
    user = bsuid or phone
    return (user, phone) if user else None


def _content(message: _Message) -> dict[str, Any] | None:
    if message.type == "text" and message.text:
        return {"text": message.text.body}
    if message.type == "interactive" and message.interactive:
        reply = message.interactive.button_reply or message.interactive.list_reply
        return {"button": reply.id} if reply else None
    if message.type == "button" and message.button:
        quick = message.button
        return {"button": quick.payload} if quick.payload else {"text": quick.text}
    if message.type == "audio" and message.audio:
        return {"voice": MediaRef(id=message.audio.id, mime=message.audio.mime_type)}
    if message.type == "contacts":
        phone = next((p.phone for card in message.contacts for p in card.phones if p.phone), None)
        return {"phone": _PUNCTUATION.sub("", phone)} if phone else None
    return None
