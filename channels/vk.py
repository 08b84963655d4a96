"""VK Callback API in, VK API methods (form-encoded POSTs over httpx) out.

In: ``confirmation`` (answered with the tenant's confirmation string), ``message_new`` (text, a keyboard
button's ``payload``, an ``audio_message`` voice note) and ``message_event`` (a callback button, to be
answered with ``ack_button``). Every event is answered "ok"; events other than these give no message.

Out: ``messages.send`` with an inline keyboard of callback buttons (VK's limits: 10 buttons, 6 rows, 5 per
row, labels up to 40 chars); more than 10 options become numbered text. ``random_id`` is derived from the
inbound event, the reply index and the part, so a retried send is dropped by VK instead of delivered twice.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from channels.base import (
    ChannelName,
    InboundMessage,
    Int64,
    MediaRef,
    OutboundMessage,
    OutButton,
    ParseResult,
    epoch,
)
from channels.exceptions import (
    BadPayload,
    BadSignature,
    PermanentSendError,
    RetryLater,
    SendError,
    Unreachable,
)
from channels.render import layout, numbered, shorten, split_text
from channels.settings import VKSettings

TEXT_LIMIT = 4096
PAYLOAD_LIMIT = 255  # characters of a keyboard button's payload
MAX_BUTTONS, MAX_ROWS, MAX_PER_ROW, LABEL_LIMIT = 10, 6, 5, 40  # inline keyboard
OK = "ok"
WEBHOOK_TITLE = "bookingbot"  # the callback server's name in the community settings (VK allows 14 chars)

_BACKOFF = {1, 6, 9, 10}  # unknown error, too many requests per second, flood control, internal server error
_UNREACHABLE = {900, 901, 902}  # user blacklisted us, has not allowed messages, privacy settings


class VKChannel:
    name: ChannelName = "vk"

    def __init__(self, settings: VKSettings, *, timeout: float = 10.0) -> None:
        self.settings = settings
        self.http = httpx.AsyncClient(timeout=timeout)

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """VK signs nothing: the community's ``secret`` travels in the body of events. VK does not promise it
        on ``confirmation`` (which only hands out the public confirmation string): one without a secret is
        answered when the community matches; a wrong secret is refused on every event."""
        event = _event(body)
        unsigned_confirmation = event.secret is None and event.type == "confirmation"
        if not unsigned_confirmation and not hmac.compare_digest(
            (event.secret or "").encode(), self.settings.secret.encode()
        ):
            raise BadSignature("wrong secret")
        if event.group_id != self.settings.group_id:
            raise BadSignature(f"event for community {event.group_id}, not {self.settings.group_id}")

    def parse(self, tenant: str, body: bytes) -> ParseResult:
        event = _event(body)
        if event.type == "confirmation":
            return ParseResult(reply=self.settings.confirmation)
        msg = _inbound(tenant, event)
        return ParseResult(messages=[msg] if msg else [], reply=OK)

    async def send(self, msg: OutboundMessage) -> None:
        keyboard = _keyboard(msg.buttons)
        text = msg.text if keyboard is not None or not msg.buttons else numbered(msg.text, msg.buttons)
        parts = split_text(text, TEXT_LIMIT)
        for part, chunk in enumerate(parts):
            params: dict[str, Any] = {
                "peer_id": msg.chat_id or msg.user_id,
                "message": chunk,
                "random_id": random_id(msg.event_id, msg.index, part),
            }
            if keyboard is not None and part == len(parts) - 1:
                params["keyboard"] = keyboard
            await self._method("messages.send", params)

    async def ack_button(self, msg: InboundMessage) -> None:
        """Answer a callback button press (VK shows a spinner until then, for up to a minute)."""
        if msg.callback_id is None:
            return
        params = {"event_id": msg.callback_id, "user_id": msg.user_id, "peer_id": msg.chat_id or msg.user_id}
        await self._method("messages.sendMessageEventAnswer", params)

    async def fetch_media(self, ref: MediaRef) -> bytes:
        """Voice notes come with ready links (``link_ogg``, ``link_mp3``) on VK's CDN, fetched without the token."""
        if ref.url is None:
            raise PermanentSendError(f"VK voice message {ref.id} has no link")
        try:
            response = await self.http.get(ref.url)
        except httpx.HTTPError as exc:
            raise vk_error(exc) from exc
        if not response.is_success:
            raise vk_error(response)
        return response.content

    async def set_webhook(self, url: str) -> None:
        """Add (or update) the community's callback server for ``url`` and subscribe it to the events we read;
        VK confirms the server by sending it a ``confirmation`` event."""
        group = self.settings.group_id
        servers = await self._method("groups.getCallbackServers", {"group_id": group})
        server_id = next((s["id"] for s in servers["items"] if s.get("url") == url), None)
        server = {"group_id": group, "url": url, "title": WEBHOOK_TITLE, "secret_key": self.settings.secret}
        if server_id is None:
            server_id = (await self._method("groups.addCallbackServer", server))["server_id"]
        else:
            await self._method("groups.editCallbackServer", server | {"server_id": server_id})
        settings = {"group_id": group, "server_id": server_id, "api_version": self.settings.api_version}
        await self._method("groups.setCallbackSettings", settings | {"message_new": 1, "message_event": 1})

    async def delete_webhook(self) -> None:
        """Turn the community's Bots Long Poll on for the events we read (the callback server, if any, keeps
        receiving them too: dedupe by event id makes the second copy a no-op)."""
        settings = {"group_id": self.settings.group_id, "enabled": 1, "api_version": self.settings.api_version}
        await self._method("groups.setLongPollSettings", settings | {"message_new": 1, "message_event": 1})

    async def updates(
        self, tenant: str, offset: LongPollServer | None, wait_s: int
    ) -> tuple[list[InboundMessage], LongPollServer | None]:
        """One Bots Long Poll request (up to ``wait_s`` seconds). ``offset`` is the server, key and ``ts`` the
        last call returned (None: ask ``groups.getLongPollServer`` for them)."""
        server = offset or LongPollServer.model_validate(
            await self._method("groups.getLongPollServer", {"group_id": self.settings.group_id})
        )
        query = {"act": "a_check", "key": server.key, "ts": str(server.ts), "wait": str(wait_s)}
        try:
            response = await self.http.get(server.server, params=query, timeout=wait_s + 10.0)
        except httpx.HTTPError as exc:
            raise vk_error(exc) from exc
        if not response.is_success:
            raise vk_error(response)
        try:
            answer = _LongPollAnswer.model_validate_json(response.content)
        except ValidationError as exc:
            raise RetryLater(f"VK long poll: unexpected answer {response.text[:200]!r}") from exc
        if answer.failed in (2, 3):  # the key expired, or key and ts are lost: a new server next time
            return [], None
        later = server.model_copy(update={"ts": answer.ts if answer.ts is not None else server.ts})
        if answer.failed:  # 1: events were lost from the history; go on from the ts given
            return [], later
        messages = [msg for event in answer.updates if (msg := _inbound(tenant, event)) is not None]
        return messages, later

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _method(self, name: str, params: Mapping[str, Any]) -> Any:
        """Call a VK API method. VK answers HTTP 200 with ``{"error": ...}`` when it refuses."""
        form = {**params, "access_token": self.settings.access_token, "v": self.settings.api_version}
        try:
            response = await self.http.post(f"{self.settings.api_base.rstrip('/')}/{name}", data=form)
        except httpx.HTTPError as exc:
            raise vk_error(exc) from exc
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not response.is_success or not isinstance(answer, dict) or "response" not in answer:
            raise vk_error(response)
        return answer["response"]


def vk_error(failure: httpx.Response | httpx.HTTPError) -> SendError:
    """The one place VK API, HTTP and transport errors become channel errors."""
    if isinstance(failure, httpx.HTTPError):
        return RetryLater(f"VK unreachable: {failure!r}")
    if failure.status_code == 429 or failure.status_code >= 500:
        return RetryLater(f"VK HTTP {failure.status_code}")
    code, message = _api_error(failure)
    text = f"VK error {code}: {message}"
    if code == 6:  # per-second limit: the next second will do
        return RetryLater(text, 1.0)
    if code in _BACKOFF:
        return RetryLater(text)
    if code in _UNREACHABLE:
        return Unreachable(text)
    return PermanentSendError(text)


def _api_error(response: httpx.Response) -> tuple[int | None, str]:
    try:
        error = response.json()["error"]
        return int(error["error_code"]), str(error.get("error_msg", ""))
    except (ValueError, KeyError, TypeError):
        return None, f"HTTP {response.status_code}: {response.text[:200]}"


def random_id(event_id: str, index: int, part: int = 0) -> int:
    """A positive 31-bit id, the same for the same (inbound event, reply index, text part): VK drops a
    ``messages.send`` whose ``random_id`` it has already seen from this community, so a retry cannot
    double-send. Without an event id there is nothing to derive from, and 0 turns the check off."""
    if not event_id:
        return 0
    digest = hashlib.blake2b(f"{event_id}\x00{index}\x00{part}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF or 1


def _keyboard(buttons: tuple[OutButton, ...]) -> str | None:
    if not buttons or len(buttons) > MAX_BUTTONS:
        return None
    rows = [[_button(b) for b in row] for row in layout(buttons, MAX_PER_ROW, MAX_ROWS)]
    return json.dumps({"inline": True, "buttons": rows}, ensure_ascii=False)


def _button(button: OutButton) -> dict[str, Any]:
    # OutButton.data is at most 64 characters, so the payload stays within VK's 255
    payload = json.dumps({"b": button.data}, ensure_ascii=False)
    action = {"type": "callback", "label": shorten(button.label, LABEL_LIMIT), "payload": payload}
    return {"action": action, "color": "secondary"}


# --- the callback events, as far as we read them ---------------------------------------------------------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Event(_Loose):
    type: str
    group_id: Int64
    event_id: str = ""
    secret: str | None = None
    object: dict[str, Any] = Field(default_factory=dict)


class _AudioMessage(_Loose):
    id: Int64
    owner_id: Int64
    link_ogg: str | None = None
    link_mp3: str | None = None


class _Attachment(_Loose):
    type: str
    audio_message: _AudioMessage | None = None


class _Message(_Loose):
    from_id: Int64
    peer_id: Int64
    date: int | None = None  # any integer: epoch() ignores impossible times
    text: str = ""
    payload: str | None = None
    attachments: list[_Attachment] = Field(default_factory=list)


class _NewMessage(_Loose):
    message: _Message


class _ButtonEvent(_Loose):
    user_id: Int64
    peer_id: Int64
    event_id: str
    payload: Any = None
    conversation_message_id: Int64 | None = None


class LongPollServer(_Loose):
    """Where the community's Bots Long Poll is read (``groups.getLongPollServer``)."""

    key: str
    server: str
    ts: str | int


class _LongPollAnswer(_Loose):
    ts: str | int | None = None
    failed: int | None = None
    updates: list[_Event] = Field(default_factory=list)


def _event(body: bytes) -> _Event:
    try:
        return _Event.model_validate_json(body)
    except ValidationError as exc:
        raise BadPayload(f"not a VK callback event: {exc.errors()[0]['msg']}") from exc


def _inbound(tenant: str, event: _Event) -> InboundMessage | None:
    if event.type not in ("message_new", "message_event"):
        return None
    if not event.event_id:
        raise BadPayload(f"{event.type} without event_id")
    try:
        if event.type == "message_new":
            return _from_message(tenant, event.event_id, _NewMessage.model_validate(event.object).message)
        return _from_button(tenant, event.event_id, _ButtonEvent.model_validate(event.object))
    except ValidationError as exc:
        raise BadPayload(f"{event.type}: {exc.errors()[0]['msg']}") from exc


def _from_message(tenant: str, event_id: str, message: _Message) -> InboundMessage | None:
    if message.from_id <= 0:  # written by a community, not a person
        return None
    button = _button_data(_json(message.payload))
    voice = next((_voice(a.audio_message) for a in message.attachments if a.audio_message), None)
    if not message.text and button is None and voice is None:  # a sticker, photo, location, ...
        return None
    return InboundMessage(
        tenant=tenant,
        channel="vk",
        user_id=str(message.from_id),
        chat_id=str(message.peer_id) if message.peer_id != message.from_id else None,
        event_id=event_id,
        text="" if button is not None else message.text,
        button=button,
        voice=voice,
        sent_at=epoch(message.date),
    )


def _from_button(tenant: str, event_id: str, press: _ButtonEvent) -> InboundMessage | None:
    button = _button_data(press.payload)
    if button is None:
        return None
    return InboundMessage(
        tenant=tenant,
        channel="vk",
        user_id=str(press.user_id),
        chat_id=str(press.peer_id),
        event_id=event_id,
        button=button,
        callback_id=press.event_id,
        callback_message=str(press.conversation_message_id) if press.conversation_message_id else None,
    )


def _voice(audio: _AudioMessage) -> MediaRef:
    """The OGG/Opus link when VK gives one (the original), else the MP3."""
    ogg = audio.link_ogg is not None or audio.link_mp3 is None
    url = audio.link_ogg if ogg else audio.link_mp3
    return MediaRef(id=f"{audio.owner_id}_{audio.id}", mime="audio/ogg" if ogg else "audio/mpeg", url=url)


def _json(raw: str | None) -> Any:
    """A button's JSON payload; VK caps payloads at 255 characters, so a longer one is no button of ours
    (and cannot nest deep enough to exhaust the parser's recursion)."""
    if not raw or len(raw) > PAYLOAD_LIMIT:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _button_data(payload: Any) -> str | None:
    """Our buttons carry ``{"b": data}``; other payloads (VK's own "Start" button) are not button presses."""
    data = payload.get("b") if isinstance(payload, dict) else None
    return data if isinstance(data, str) else None
