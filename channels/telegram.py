"""Telegram: webhooks and polled updates read by a lean model of the fields we use, aiogram 3's ``Bot`` sends.

aiogram's own ``Update`` validates every field of every update type: about a sixth of the webhook server's CPU,
spent on fields we never read, and a webhook refused for a field Telegram adds or changes that we do not use.

Handled updates: ``message`` with text (``/start`` included), voice or a shared contact, and
``callback_query`` (an inline button). Edited messages, stickers, photos, locations and every other update
type are acknowledged and give no message.
"""

from __future__ import annotations

import hmac
import io
import math
from collections.abc import Mapping
from typing import Any, TypeVar

import aiohttp
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import (
    AnswerCallbackQuery,
    DeleteWebhook,
    EditMessageReplyMarkup,
    GetFile,
    GetUpdates,
    SendMessage,
    SetWebhook,
    TelegramMethod,
)
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup
from pydantic import BaseModel, Field, ValidationError

from channels.base import (
    ChannelName,
    InboundMessage,
    Int64,
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
from channels.render import layout, numbered, split_text, utf16_len
from channels.settings import TelegramSettings

T = TypeVar("T")

TEXT_LIMIT = 4096  # UTF-16 code units per message
DATA_LIMIT = 64  # bytes of callback_data
MAX_BUTTONS = 100  # per inline keyboard; more are sent as numbered text
MAX_PER_ROW = 8
_FAILURES = (TelegramAPIError, ClientDecodeError, aiohttp.ClientError, TimeoutError)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
UPDATES = ["message", "callback_query"]  # what set_webhook subscribes to


class _User(BaseModel):
    id: Int64


class _Chat(BaseModel):
    id: Int64


class _Voice(BaseModel):
    file_id: str
    mime_type: str | None = None


class _Contact(BaseModel):
    phone_number: str


class _Message(BaseModel):
    message_id: Int64
    date: Int64  # Unix time; 0 in an inaccessible message
    chat: _Chat
    from_user: _User | None = Field(default=None, alias="from")
    text: str | None = None
    voice: _Voice | None = None
    contact: _Contact | None = None


class _CallbackQuery(BaseModel):
    id: str
    from_user: _User = Field(alias="from")
    message: _Message | None = None
    data: str | None = None


class _Update(BaseModel):
    """The fields of an update we read; the rest is ignored (not validated), as Telegram adds fields over time."""

    update_id: Int64
    message: _Message | None = None
    callback_query: _CallbackQuery | None = None


class TelegramChannel:
    name: ChannelName = "telegram"

    def __init__(self, settings: TelegramSettings, *, timeout: float = 10.0) -> None:
        self.settings = settings
        self._timeout = timeout
        server = TelegramAPIServer.from_base(settings.api_base)
        self.bot = Bot(settings.token, session=AiohttpSession(api=server, timeout=timeout))

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        given = header(headers, SECRET_HEADER)
        if given is None:
            raise BadSignature(f"missing {SECRET_HEADER} header")
        if not hmac.compare_digest(given.encode(), self.settings.webhook_secret.encode()):
            raise BadSignature(f"wrong {SECRET_HEADER}")

    def parse(self, tenant: str, body: bytes) -> ParseResult:
        try:
            msg = _inbound(tenant, _Update.model_validate_json(body))
        except ValidationError as exc:
            raise BadPayload(f"not a Telegram update: {exc.errors()[0]['msg']}") from exc
        return ParseResult(messages=[msg] if msg else [])

    async def send(self, msg: OutboundMessage) -> None:
        """Long texts go as several messages, the keyboard on the last one."""
        chat = _chat(msg.chat_id or msg.user_id)
        markup = _keyboard(msg.buttons)
        text = msg.text if markup is not None or not msg.buttons else numbered(msg.text, msg.buttons)
        parts = split_text(text, TEXT_LIMIT, utf16_len)
        for number, part in enumerate(parts, 1):
            keyboard = markup if number == len(parts) else None
            await self._call(SendMessage(chat_id=chat, text=part, reply_markup=keyboard))

    async def ack_button(self, msg: InboundMessage) -> None:
        """Answer the callback query (stops the client's spinner) and remove the pressed keyboard so it cannot
        be pressed twice. Telegram's 400s here (query too old, keyboard already removed) mean there is nothing
        left to do, which makes a retried ack harmless."""
        if msg.callback_id is None:
            return
        await self._ack(AnswerCallbackQuery(callback_query_id=msg.callback_id))
        if msg.callback_message is not None and msg.chat_id is not None:
            edit = EditMessageReplyMarkup(chat_id=_chat(msg.chat_id), message_id=int(msg.callback_message))
            await self._ack(edit)

    async def fetch_media(self, ref: MediaRef) -> bytes:
        file = await self._call(GetFile(file_id=ref.id))
        if not file.file_path:
            raise PermanentSendError(f"Telegram gave no file_path for {ref.id}")
        buffer = io.BytesIO()
        try:
            await self.bot.download_file(file.file_path, destination=buffer)
        except _FAILURES as exc:
            raise telegram_error(exc) from exc
        return buffer.getvalue()

    async def set_webhook(self, url: str) -> None:
        hook = SetWebhook(url=url, secret_token=self.settings.webhook_secret, allowed_updates=UPDATES)
        await self._call(hook)

    async def delete_webhook(self) -> None:
        """Long polling and a webhook exclude each other: getUpdates answers 409 while a webhook is set.
        Pending updates are kept: the poller picks them up."""
        await self._call(DeleteWebhook(drop_pending_updates=False))

    async def updates(self, tenant: str, offset: int | None, wait_s: int) -> tuple[list[InboundMessage], int | None]:
        """One ``getUpdates`` long poll (up to ``wait_s`` seconds): the messages and the offset that confirms
        them on the next call. Calling again with an older offset gets the same updates again (and dedupe
        drops those already accepted), so nothing is confirmed before the caller has accepted it."""
        poll = GetUpdates(offset=offset, timeout=wait_s, allowed_updates=UPDATES)
        updates = await self._call(poll, request_timeout=wait_s + math.ceil(self._timeout))
        read = [_Update.model_validate(u.model_dump(by_alias=True, exclude_none=True)) for u in updates]
        messages = [msg for update in read if (msg := _inbound(tenant, update)) is not None]
        return messages, (updates[-1].update_id + 1 if updates else offset)

    async def aclose(self) -> None:
        await self.bot.session.close()

    async def _call(self, method: TelegramMethod[T], request_timeout: int | None = None) -> T:
        try:
            return await self.bot(method, request_timeout=request_timeout)
        except _FAILURES as exc:
            raise telegram_error(exc) from exc

    async def _ack(self, method: TelegramMethod[Any]) -> None:
        try:
            await self.bot(method)
        except TelegramBadRequest:
            return  # the query is too old or the keyboard is already gone: nothing left to do
        except _FAILURES as exc:
            raise telegram_error(exc) from exc


def telegram_error(exc: BaseException) -> SendError:
    """The one place Telegram / aiogram / transport errors become channel errors."""
    if isinstance(exc, TelegramRetryAfter):
        return RetryLater(str(exc), float(exc.retry_after))
    if isinstance(exc, TelegramForbiddenError):  # blocked by the user, kicked, deactivated
        return Unreachable(exc.message)
    if isinstance(exc, TelegramBadRequest) and "chat not found" in exc.message.lower():
        return Unreachable(exc.message)
    if isinstance(exc, TelegramEntityTooLarge):
        return PermanentSendError(exc.message)
    if isinstance(exc, aiohttp.ClientResponseError):  # file download
        transient = exc.status == 429 or exc.status >= 500
        return (RetryLater if transient else PermanentSendError)(f"Telegram file download: {exc.status}")
    if isinstance(exc, TelegramServerError | TelegramNetworkError | ClientDecodeError):
        return RetryLater(str(exc))
    if isinstance(exc, aiohttp.ClientError | TimeoutError):
        return RetryLater(f"Telegram unreachable: {exc!r}")
    return PermanentSendError(str(exc))


def _inbound(tenant: str, update: _Update) -> InboundMessage | None:
    if update.message is not None:
        return _from_message(tenant, str(update.update_id), update.message)
    if update.callback_query is not None:
        return _from_callback(tenant, str(update.update_id), update.callback_query)
    return None


def _from_message(tenant: str, event_id: str, message: _Message) -> InboundMessage | None:
    if message.from_user is None:
        return None
    common: dict[str, Any] = {
        "tenant": tenant,
        "channel": "telegram",
        "user_id": str(message.from_user.id),
        "chat_id": str(message.chat.id),
        "event_id": event_id,
        "sent_at": epoch(message.date),
    }
    if message.text is not None:
        return InboundMessage(**common, text=message.text)
    if message.voice is not None:
        voice = MediaRef(id=message.voice.file_id, mime=message.voice.mime_type)
        return InboundMessage(**common, voice=voice)
    if message.contact is not None:
        return InboundMessage(**common, phone=_plus(message.contact.phone_number))
    return None


def _from_callback(tenant: str, event_id: str, query: _CallbackQuery) -> InboundMessage | None:
    if query.data is None:  # a game button: not ours
        return None
    on = query.message
    return InboundMessage(
        tenant=tenant,
        channel="telegram",
        user_id=str(query.from_user.id),
        chat_id=str(on.chat.id) if on is not None else None,
        event_id=event_id,
        button=query.data,
        callback_id=query.id,
        callback_message=str(on.message_id) if on is not None else None,
    )


def _plus(phone: str) -> str:
    """Telegram shares contact numbers in international form without the leading '+'."""
    return phone if phone.startswith("+") else f"+{phone}"


def _chat(chat_id: str) -> int | str:
    return int(chat_id) if chat_id.lstrip("-").isdigit() else chat_id


def _keyboard(buttons: tuple[OutButton, ...]) -> InlineKeyboardMarkup | None:
    """An inline keyboard, or None when there are no buttons or too many (the caller numbers them instead).

    ``callback_data`` is opaque and must come back unchanged, so data over 64 bytes cannot be shortened here
    (that would need state): it is refused, and the engine keeps button data short."""
    if not buttons or len(buttons) > MAX_BUTTONS:
        return None
    for button in buttons:
        size = len(button.data.encode())
        if not 1 <= size <= DATA_LIMIT:
            raise PermanentSendError(f"callback_data {button.data!r} is {size} bytes; Telegram takes 1-64")
    rows = layout(buttons, MAX_PER_ROW, MAX_BUTTONS)
    keyboard = [[InlineKeyboardButton(text=b.label, callback_data=b.data) for b in row] for row in rows]
    return InlineKeyboardMarkup(inline_keyboard=keyboard)
