"""WhatsApp Cloud API (Graph API) double.

- ``POST /{version}/{phone-number-id}/messages``: text and interactive (reply buttons / list) messages,
  checked against the documented limits; success ``{"messaging_product", "contacts", "messages": [{"id"}]}``.
- ``GET /{version}/{media-id}``: media url, then ``GET /whatsapp_business/attachments/?mid=...`` with the
  bearer token gives the bytes.
- ``POST /{version}/{phone-number-id}`` with ``webhook_configuration``: sets the number's callback override
  after the ``hub.challenge`` handshake against it, as Meta does.

Errors in Graph's shape:
``{"error": {"message", "type", "code", "error_data", "error_subcode", "fbtrace_id"}}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from . import Call, Delivery, Double, Failure, cli, form_params, serve

TEXT_LIMIT, BODY_LIMIT = 4096, 1024
MAX_REPLY_BUTTONS, BUTTON_TITLE, BUTTON_ID = 3, 20, 256
MAX_ROWS, MAX_SECTIONS, ROW_TITLE, ROW_DESCRIPTION, ROW_ID = 10, 10, 24, 72, 200
SIGNATURE_HEADER = "X-Hub-Signature-256"

TITLES = {
    100: "Invalid parameter",
    190: "Invalid OAuth access token - Cannot parse access token",
    2200: "Callback verification failed",
    130429: "Rate limit hit",
    131000: "Something went wrong",
    131008: "Required parameter is missing",
    131009: "Parameter value is not valid",
    131026: "Message undeliverable",
    131047: "Re-engagement message",
    131056: "(Business Account, Consumer Account) pair rate limit hit",
}


class GraphError(Exception):
    def __init__(self, status: int, code: int, details: str = "", subcode: int | None = None) -> None:
        super().__init__(details or TITLES.get(code, "error"))
        self.status, self.code, self.details, self.subcode = status, code, details, subcode

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": f"(#{self.code}) {TITLES.get(self.code, 'An unknown error occurred')}",
            "type": "OAuthException",
            "code": self.code,
            "error_data": {"messaging_product": "whatsapp", "details": self.details},
            "fbtrace_id": secrets.token_urlsafe(12),
        }
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        return {"error": error}


def signature(body: bytes, app_secret: str) -> str:
    """The ``X-Hub-Signature-256`` header Meta puts on a webhook body."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


class WhatsAppDouble(Double):
    def __init__(self, phone_number_id: str, access_token: str) -> None:
        super().__init__()
        self.numbers: dict[str, str] = {phone_number_id: access_token}  # phone number id -> its token
        self.media: dict[str, tuple[bytes, str]] = {}  # media id -> (content, mime type)
        self.sent: list[dict[str, Any]] = []  # accepted message bodies, per number in ``sent_from``
        self.sent_from: list[str] = []
        self.webhooks: dict[str, str] = {}  # phone number id -> override callback url
        version = r"{version:v\d+\.\d+}"
        self.app.router.add_post(f"/{version}/{{node}}/messages", self._messages)
        self.app.router.add_get(f"/{version}/{{node}}", self._media_url)
        self.app.router.add_post(f"/{version}/{{node}}", self._configure)
        self.app.router.add_get("/whatsapp_business/attachments/", self._download)

    def reset(self) -> None:
        super().reset()
        self.sent.clear()
        self.sent_from.clear()

    def add_number(self, phone_number_id: str, access_token: str) -> None:
        self.numbers[phone_number_id] = access_token

    def add_media(self, media_id: str, content: bytes, mime: str = "audio/ogg; codecs=opus") -> None:
        self.media[media_id] = (content, mime)

    async def deliver(self, url: str, payload: Mapping[str, Any], app_secret: str) -> Delivery:
        """POST a webhook as Meta does: JSON body signed with the app secret."""
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(body, app_secret)}
        return await self._post(url, body, headers)

    async def _messages(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]
        body = await _json_body(request)
        call = self._record(request, "messages", body)
        try:
            self._authorize(request, node)
            self._injected()
            _check_message(body)
        except GraphError as error:
            return _refusal(call, error)
        self.sent.append(body)
        self.sent_from.append(node)
        to = body.get("to") or body.get("recipient")
        contact = {"input": to, "user_id" if "recipient" in body and "to" not in body else "wa_id": to}
        wamid = "wamid." + secrets.token_urlsafe(24)
        return web.json_response({"messaging_product": "whatsapp", "contacts": [contact], "messages": [{"id": wamid}]})

    async def _media_url(self, request: web.Request) -> web.Response:
        media_id = request.match_info["node"]
        call = self._record(request, "media", {"id": media_id})
        try:
            self._authorize(request, None)
            self._injected()
            if media_id not in self.media:
                raise GraphError(400, 100, f"Unsupported get request. Object with ID '{media_id}' does not exist", 33)
        except GraphError as error:
            return _refusal(call, error)
        content, mime = self.media[media_id]
        url = f"{self.url}/whatsapp_business/attachments/?mid={media_id}&ext=1&hash={secrets.token_hex(8)}"
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "url": url,
                "mime_type": mime,
                "sha256": hashlib.sha256(content).hexdigest(),
                "file_size": len(content),
                "id": media_id,
            }
        )

    async def _download(self, request: web.Request) -> web.Response:
        media_id = request.query.get("mid", "")
        call = self._record(request, "download", {"mid": media_id})
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.numbers.values() or media_id not in self.media:
            call.status, call.error = 404, "not found"
            return web.Response(status=404, text="Not Found")
        content, mime = self.media[media_id]
        return web.Response(body=content, headers={"Content-Type": mime})

    async def _configure(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]
        params = await form_params(request)
        call = self._record(request, "configure", params)
        try:
            self._authorize(request, node)
            self._injected()
            config = params.get("webhook_configuration")
            if isinstance(config, str):
                config = json.loads(config)
            if not isinstance(config, dict) or not config.get("override_callback_uri"):
                raise GraphError(400, 131008, "webhook_configuration.override_callback_uri is required")
            await self._handshake(config["override_callback_uri"], str(config.get("verify_token", "")))
        except GraphError as error:
            return _refusal(call, error)
        self.webhooks[node] = config["override_callback_uri"]
        return web.json_response({"success": True})

    async def _handshake(self, url: str, verify_token: str) -> None:
        challenge = str(secrets.randbelow(10**9))
        params = {"hub.mode": "subscribe", "hub.challenge": challenge, "hub.verify_token": verify_token}
        try:
            answer = await self._get(url, params)
        except OSError as exc:
            raise GraphError(400, 2200, f"Callback verification failed: {exc}") from exc
        if answer.status != 200 or answer.text != challenge:
            raise GraphError(400, 2200, f"HTTP Status Code = {answer.status}; response did not match the challenge")

    def _authorize(self, request: web.Request, node: str | None) -> None:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if node is None:
            allowed = token in self.numbers.values()
        elif node not in self.numbers:
            raise GraphError(400, 100, f"Unsupported post request. Object with ID '{node}' does not exist", 33)
        else:
            allowed = hmac.compare_digest(token, self.numbers[node])
        if not allowed:
            raise GraphError(401, 190)

    def _injected(self) -> None:
        failure = self._take_failure()
        if failure is not None:
            raise _failure(failure)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    return body if isinstance(body, dict) else {}


def _failure(failure: Failure) -> GraphError:
    code = failure.code or (131000 if (failure.status or 0) >= 500 else 130429)
    status = failure.status or (500 if code == 131000 else 400)
    return GraphError(status, code, TITLES.get(code, ""))


def _refusal(call: Call, error: GraphError) -> web.Response:
    call.status, call.error = error.status, f"#{error.code} {error.details}"
    return web.json_response(error.body(), status=error.status)


def _check_message(body: dict[str, Any]) -> None:
    if body.get("messaging_product") != "whatsapp":
        raise GraphError(400, 100, "messaging_product must be 'whatsapp'")
    if not body.get("to") and not body.get("recipient"):
        raise GraphError(400, 131008, "to or recipient is required")
    kind = body.get("type", "text")
    if kind == "text":
        text = body.get("text")
        text_body = text.get("body") if isinstance(text, dict) else None
        _length(text_body, TEXT_LIMIT, "Message body")
    elif kind == "interactive":
        _check_interactive(body.get("interactive"))
    elif kind == "template":
        template = body.get("template")
        language = template.get("language") if isinstance(template, dict) else None
        if not isinstance(template, dict) or not template.get("name") or not (language or {}).get("code"):
            raise GraphError(400, 131008, "template.name and template.language.code are required")
    else:
        raise GraphError(400, 100, f"this double does not implement type {kind!r}")


def _length(value: Any, limit: int, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise GraphError(400, 131008, f"{what} is required")
    if len(value) > limit:
        raise GraphError(400, 131009, f"{what} length invalid. Min length: 1, Max length: {limit}")


def _check_interactive(interactive: Any) -> None:
    if not isinstance(interactive, dict):
        raise GraphError(400, 131008, "interactive is required")
    body = interactive.get("body")
    _length(body.get("text") if isinstance(body, dict) else None, BODY_LIMIT, "Body text")
    action = interactive.get("action")
    if not isinstance(action, dict):
        raise GraphError(400, 131008, "action is required")
    if interactive.get("type") == "button":
        _check_buttons(action.get("buttons"))
    elif interactive.get("type") == "list":
        _check_list(action)
    else:
        raise GraphError(400, 100, f"interactive type {interactive.get('type')!r} is not implemented")


def _check_buttons(buttons: Any) -> None:
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= MAX_REPLY_BUTTONS:
        raise GraphError(400, 131009, f"buttons: must have between 1 and {MAX_REPLY_BUTTONS} elements")
    replies = [b.get("reply") if isinstance(b, dict) and b.get("type") == "reply" else None for b in buttons]
    for reply in replies:
        if not isinstance(reply, dict):
            raise GraphError(400, 131009, "each button must be of type reply with a reply object")
        _length(reply.get("id"), BUTTON_ID, "Button ID")
        _length(reply.get("title"), BUTTON_TITLE, "Button title")
    _unique([r["id"] for r in replies if r], "Button ID")
    _unique([r["title"] for r in replies if r], "Button title")


def _check_list(action: dict[str, Any]) -> None:
    _length(action.get("button"), BUTTON_TITLE, "Button label")
    sections = action.get("sections")
    if not isinstance(sections, list) or not 1 <= len(sections) <= MAX_SECTIONS:
        raise GraphError(400, 131009, f"sections: must have between 1 and {MAX_SECTIONS} elements")
    if not all(isinstance(s, dict) and isinstance(s.get("rows"), list) for s in sections):
        raise GraphError(400, 131008, "each section needs rows")
    if len(sections) > 1 and not all(s.get("title") for s in sections):
        raise GraphError(400, 131009, "Section title is required when there is more than one section")
    rows = [row for s in sections for row in s["rows"]]
    if not 1 <= len(rows) <= MAX_ROWS:
        raise GraphError(400, 131009, f"Total row count exceed max allowed count: {MAX_ROWS}")
    for row in rows:
        if not isinstance(row, dict):
            raise GraphError(400, 131009, "rows must be objects")
        _length(row.get("id"), ROW_ID, "Row ID")
        _length(row.get("title"), ROW_TITLE, "Row title")
        if "description" in row:
            _length(row["description"], ROW_DESCRIPTION, "Row description")
    _unique([row["id"] for row in rows], "Row ID")


def _unique(values: list[Any], what: str) -> None:
    if len(set(values)) != len(values):
        raise GraphError(400, 131009, f"{what} must be unique")


if __name__ == "__main__":
    parser = cli("WhatsApp Cloud API double")
    parser.add_argument("--phone-number-id", required=True)
    parser.add_argument("--access-token", required=True)
    args = parser.parse_args()
    serve(WhatsAppDouble(args.phone_number_id, args.access_token), args.port)
