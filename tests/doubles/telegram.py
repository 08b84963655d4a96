"""Telegram Bot API double: ``/bot<token>/<method>`` answering ``{"ok": true, "result": ...}`` or
``{"ok": false, "error_code": N, "description": ..., "parameters": {"retry_after": N}}``, and file
downloads at ``/file/bot<token>/<file_path>``.

Implemented methods: getMe, sendMessage, answerCallbackQuery, editMessageReplyMarkup, getFile, setWebhook,
getWebhookInfo, deleteWebhook, getUpdates. Unlike the real API, ``setWebhook`` accepts plain-http loopback urls.
``getUpdates`` long-polls updates queued with ``queue_update`` as the Bot API does: 409 while a webhook is set,
``offset`` confirms (forgets) every earlier update, ``timeout`` waits for one to arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

from . import Call, Delivery, Double, Failure, cli, form_params, serve

TEXT_LIMIT = 4096  # UTF-16 code units
DATA_LIMIT = 64  # bytes of callback_data
MAX_BUTTONS, MAX_PER_ROW = 100, 8
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_JSON_FIELDS = ("reply_markup", "allowed_updates")  # sent as JSON strings inside form bodies
_ACTIONS = ("callback_data", "url", "login_url", "switch_inline_query", "web_app", "pay", "copy_text")


class Refused(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


FILE_LIMIT = 20 * 1024 * 1024  # the Bot API's getFile refuses bigger files


class TelegramDouble(Double):
    def __init__(self, *tokens: str) -> None:
        super().__init__()
        self.tokens = set(tokens)
        self.blocked: set[str] = set()  # chat ids that blocked the bot
        self.files: dict[str, tuple[str, bytes]] = {}  # file_id -> (file_path, content)
        self.webhooks: dict[str, dict[str, Any]] = {}  # token -> setWebhook parameters
        self.sent: list[dict[str, Any]] = []  # accepted sendMessage calls, reply_markup decoded
        self.answered: list[str] = []  # answered callback query ids
        self.keyboards: dict[tuple[str, int], Any] = {}  # (chat, message_id) -> current reply_markup
        self._ids = itertools.count(1)
        self.pending: dict[str, list[dict[str, Any]]] = {}  # token -> updates not yet confirmed
        # Ids grow with the clock (tenths of a second since 2026), as a restarted Telegram's would keep growing:
        # a bot polling with an offset from before a restart of the double would drop ids counted from 1.
        self._update_ids = itertools.count(int(time.time() * 10) - 17_672_256_000)
        self._arrived = asyncio.Event()
        self._stopping = False
        self._methods: dict[str, Callable[[str, dict[str, Any]], Any]] = {
            "getme": self._get_me,
            "sendmessage": self._send_message,
            "answercallbackquery": self._answer_callback_query,
            "editmessagereplymarkup": self._edit_reply_markup,
            "getfile": self._get_file,
            "setwebhook": self._set_webhook,
            "getwebhookinfo": self._get_webhook_info,
            "deletewebhook": self._delete_webhook,
        }
        self.app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self.app.router.add_get("/file/bot{token}/{path:.+}", self._download)

    def reset(self) -> None:
        super().reset()
        self.sent.clear()
        self.answered.clear()
        self.keyboards.clear()

    def queue_update(self, token: str, update: Mapping[str, Any]) -> int:
        """Queue an update for ``getUpdates`` (an ``update_id`` is given when it has none); returns its id."""
        queued = {"update_id": next(self._update_ids), **update}
        self.pending.setdefault(token, []).append(queued)
        self._arrived.set()
        return int(queued["update_id"])

    async def stop(self) -> None:
        self._stopping = True  # answer waiting getUpdates calls now: the server waits for open requests to end
        self._arrived.set()
        await super().stop()
        self._stopping = False

    def block(self, chat_id: int | str) -> None:
        self.blocked.add(str(chat_id))

    def add_file(self, file_id: str, content: bytes, path: str | None = None) -> None:
        self.files[file_id] = (path or f"voice/{file_id}.oga", content)

    async def deliver(self, url: str, update: Mapping[str, Any], secret_token: str | None) -> Delivery:
        """POST an update to a webhook as Telegram does (with the secret token header when one is set)."""
        headers = {"Content-Type": "application/json"}
        if secret_token is not None:
            headers[SECRET_HEADER] = secret_token
        return await self._post(url, json.dumps(update).encode(), headers)

    async def _handle(self, request: web.Request) -> web.Response:
        token, name = request.match_info["token"], request.match_info["method"]
        call = self._record(request, name, await form_params(request))
        try:
            _decode(call.params)
            if token not in self.tokens:
                raise Refused(401, "Unauthorized")
            failure = self._take_failure()
            if failure is not None:
                raise _injected(failure)
            if name.lower() == "getupdates":
                return web.json_response({"ok": True, "result": await self._get_updates(token, call.params)})
            method = self._methods.get(name.lower())  # Bot API method names are case-insensitive
            if method is None:
                raise Refused(404, "Not Found")
            return web.json_response({"ok": True, "result": method(token, call.params)})
        except Refused as refused:
            return _refusal(call, refused)

    async def _download(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        content = next((c for p, c in self.files.values() if p == path), None)
        if request.match_info["token"] not in self.tokens or content is None:
            return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)
        return web.Response(body=content, content_type="application/octet-stream")

    def _get_me(self, token: str, params: dict[str, Any]) -> Any:
        return {
            "id": int(token.split(":")[0]),
            "is_bot": True,
            "first_name": "Double",
            "username": "double_bot",
        }

    def _send_message(self, token: str, params: dict[str, Any]) -> Any:
        chat = _required_chat(params)
        if chat in self.blocked:
            raise Refused(403, "Forbidden: bot was blocked by the user")
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise Refused(400, "Bad Request: message text is empty")
        if len(text.encode("utf-16-le")) // 2 > TEXT_LIMIT:
            raise Refused(400, "Bad Request: message is too long")
        markup = params.get("reply_markup")
        _check_markup(markup)
        message_id = next(self._ids)
        self.keyboards[(chat, message_id)] = markup
        self.sent.append({"chat_id": chat, "text": text, "reply_markup": markup, "message_id": message_id})
        message = {"message_id": message_id, "date": int(time.time()), "chat": _chat(chat), "text": text}
        return message | ({"reply_markup": markup} if markup else {})

    def _answer_callback_query(self, token: str, params: dict[str, Any]) -> Any:
        query = params.get("callback_query_id")
        if not query:
            raise Refused(400, "Bad Request: query_id is empty")
        if query in self.answered:
            raise Refused(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        self.answered.append(query)
        return True

    def _edit_reply_markup(self, token: str, params: dict[str, Any]) -> Any:
        key = (_required_chat(params), int(params.get("message_id") or 0))
        if key not in self.keyboards:
            raise Refused(400, "Bad Request: message to edit not found")
        markup = params.get("reply_markup")
        _check_markup(markup)
        if markup == self.keyboards[key]:
            raise Refused(
                400,
                "Bad Request: message is not modified: specified new message content and reply "
                "markup are exactly the same as a current content and reply markup of the message",
            )
        self.keyboards[key] = markup
        return True

    def _get_file(self, token: str, params: dict[str, Any]) -> Any:
        file_id = params.get("file_id", "")
        if file_id not in self.files:
            raise Refused(400, "Bad Request: invalid file_id")
        path, content = self.files[file_id]
        if len(content) > FILE_LIMIT:
            raise Refused(400, "Bad Request: file is too big")
        return {
            "file_id": file_id,
            "file_unique_id": f"u{file_id}",
            "file_size": len(content),
            "file_path": path,
        }

    def _set_webhook(self, token: str, params: dict[str, Any]) -> Any:
        if not params.get("url"):
            raise Refused(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not _SECRET.match(secret):
            raise Refused(400, "Bad Request: bad webhook: secret token contains unallowed characters")
        self.webhooks[token] = params
        return True

    def _get_webhook_info(self, token: str, params: dict[str, Any]) -> Any:
        hook = self.webhooks.get(token, {})
        return {"url": hook.get("url", ""), "has_custom_certificate": False, "pending_update_count": 0} | (
            {"allowed_updates": hook["allowed_updates"]} if "allowed_updates" in hook else {}
        )

    def _delete_webhook(self, token: str, params: dict[str, Any]) -> Any:
        self.webhooks.pop(token, None)
        if str(params.get("drop_pending_updates", "")).lower() == "true":
            self.pending.pop(token, None)
        return True

    async def _get_updates(self, token: str, params: dict[str, Any]) -> Any:
        if token in self.webhooks:
            raise Refused(
                409, "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete "
                "the webhook first"
            )
        offset, timeout = int(params.get("offset") or 0), float(params.get("timeout") or 0)
        limit = min(100, int(params.get("limit") or 100))
        allowed = params.get("allowed_updates")
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            queue = self.pending.setdefault(token, [])
            queue[:] = [u for u in queue if u["update_id"] >= offset]  # an offset confirms everything before it
            ready = [u for u in queue if not allowed or any(kind in u for kind in allowed)]
            left = deadline - asyncio.get_running_loop().time()
            if ready or left <= 0 or self._stopping:
                return ready[:limit]
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)


def _decode(params: dict[str, Any]) -> None:
    for key in _JSON_FIELDS:
        if isinstance(params.get(key), str):
            try:
                params[key] = json.loads(params[key])
            except ValueError as exc:
                raise Refused(400, f"Bad Request: can't parse {key} JSON object") from exc


def _required_chat(params: dict[str, Any]) -> str:
    chat = params.get("chat_id")
    if chat is None or chat == "":
        raise Refused(400, "Bad Request: chat_id is empty")
    return str(chat)


def _chat(chat: str) -> dict[str, Any]:
    return {"id": int(chat) if chat.lstrip("-").isdigit() else chat, "type": "private"}


def _check_markup(markup: Any) -> None:
    """Inline keyboards as the Bot API checks them."""
    if markup is None or not isinstance(markup, dict) or "inline_keyboard" not in markup:
        return
    rows = markup["inline_keyboard"]
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise Refused(
            400,
            'Bad Request: field "inline_keyboard" of the InlineKeyboardMarkup should be an Array of Arrays',
        )
    buttons = [b for row in rows for b in row]
    if len(buttons) > MAX_BUTTONS or any(len(row) > MAX_PER_ROW for row in rows):
        raise Refused(400, "Bad Request: BUTTONS_TOO_MUCH")
    for button in buttons:
        if not isinstance(button, dict) or not str(button.get("text", "")).strip():
            raise Refused(400, "Bad Request: BUTTON_TEXT_INVALID")
        if not any(key in button for key in _ACTIONS):
            raise Refused(400, "Bad Request: text buttons are unallowed in the inline keyboard")
        data = button.get("callback_data")
        if data is not None and not 1 <= len(str(data).encode()) <= DATA_LIMIT:
            raise Refused(400, "Bad Request: BUTTON_DATA_INVALID")


def _injected(failure: Failure) -> Refused:
    status = failure.status or 429
    if status == 429:
        after = failure.retry_after or 1
        return _RetryAfter(after)
    if status == 403:
        return Refused(403, "Forbidden: bot was blocked by the user")
    return Refused(status, HTTPStatus(status).phrase)


class _RetryAfter(Refused):
    def __init__(self, retry_after: int) -> None:
        super().__init__(429, f"Too Many Requests: retry after {retry_after}")
        self.retry_after = retry_after


def _refusal(call: Call, refused: Refused) -> web.Response:
    call.status, call.error = refused.status, refused.description
    body: dict[str, Any] = {"ok": False, "error_code": refused.status, "description": refused.description}
    if isinstance(refused, _RetryAfter):
        body["parameters"] = {"retry_after": refused.retry_after}
    return web.json_response(body, status=refused.status)


if __name__ == "__main__":
    parser = cli("Telegram Bot API double")
    parser.add_argument("--token", action="append", required=True, help="a bot token to accept (repeatable)")
    args = parser.parse_args()
    serve(TelegramDouble(*args.token), args.port)
