"""VK API double: ``/method/<name>`` (form or query parameters with ``access_token`` and ``v``) answering HTTP
200 with ``{"response": ...}`` or ``{"error": {"error_code", "error_msg", "request_params"}}``; files (voice
notes' ``link_ogg``) at ``/files/<name>``. Point ``api_base`` at ``{double.url}/method``.

Implemented methods: messages.send (with VK's ``random_id`` de-duplication and keyboard limits),
messages.sendMessageEventAnswer, groups.getCallbackServers, groups.addCallbackServer,
groups.editCallbackServer, groups.setCallbackSettings, groups.getCallbackConfirmationCode. Adding or editing a
callback server sends it a ``confirmation`` event, as VK does.

Bots Long Poll: groups.setLongPollSettings, groups.getLongPollServer (a ``server`` URL on this double, a
``key`` and a ``ts``) and that server's ``?act=a_check&key=&ts=&wait=``: the events queued with
``queue_event`` after ``ts``, waiting up to ``wait`` seconds for one; ``{"failed": 2}`` for a key that
``expire_keys`` made stale, ``{"failed": 1, "ts": ...}`` for a ``ts`` from the future.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import Delivery, Double, cli, form_params, serve

TEXT_LIMIT = 4096
LABEL_LIMIT, PAYLOAD_LIMIT, TITLE_LIMIT = 40, 255, 14
INLINE = (6, 5, 10)  # rows, buttons per row, buttons in all
STANDARD = (10, 5, 40)
_BUTTON_TYPES = {"text", "callback", "open_link", "location", "vkpay", "open_app"}

MESSAGES = {
    3: "Unknown method passed",
    5: "User authorization failed: invalid access_token (4).",
    6: "Too many requests per second",
    8: "Invalid request: v (version) is required",
    9: "Flood control",
    10: "Internal server error",
    15: "Access denied: no access to this group",
    100: "One of the parameters specified was missing or invalid",
    901: "Can't send messages for users without permission",
    911: "Keyboard format is invalid",
    914: "Message is too long",
}


class VKError(Exception):
    def __init__(self, code: int, detail: str = "") -> None:
        message = MESSAGES.get(code, "Unknown error occurred")
        super().__init__(f"{message}: {detail}" if detail else message)
        self.code = code


@dataclass
class Group:
    access_token: str
    confirmation: str
    servers: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[int, dict[str, Any]] = field(default_factory=dict)  # server id -> setCallbackSettings
    long_poll: dict[str, Any] = field(default_factory=dict)  # the last setLongPollSettings
    events: list[dict[str, Any]] = field(default_factory=list)  # long poll history; event n has ts n + 1
    key: str = ""


class VKDouble(Double):
    def __init__(self, group_id: int, access_token: str, confirmation: str = "") -> None:
        super().__init__()
        self.groups: dict[int, Group] = {group_id: Group(access_token, confirmation)}
        self.blocked: set[str] = set()  # peers that have not allowed messages from the community
        self.files: dict[str, bytes] = {}
        self.sent: list[dict[str, Any]] = []  # accepted (not de-duplicated) messages.send, keyboard decoded
        self.answers: list[dict[str, Any]] = []  # messages.sendMessageEventAnswer calls
        self._seen: dict[tuple[int, str, int], int] = {}  # (group, peer, random_id) -> message id
        self._ids = itertools.count(1)
        self._server_ids = itertools.count(1)
        self._methods: dict[str, Callable[[int, dict[str, Any]], Any]] = {
            "messages.send": self._send,
            "messages.sendMessageEventAnswer": self._event_answer,
            "groups.getCallbackServers": self._servers,
            "groups.getCallbackConfirmationCode": self._confirmation_code,
            "groups.setCallbackSettings": self._callback_settings,
            "groups.setLongPollSettings": self._long_poll_settings,
            "groups.getLongPollServer": self._long_poll_server,
        }
        self._arrived = asyncio.Event()
        self.app.router.add_get("/longpoll/{group}", self._long_poll)
        self.app.router.add_route("*", "/method/{name}", self._handle)
        self.app.router.add_get("/files/{name}", self._download)

    def reset(self) -> None:
        super().reset()
        self.sent.clear()
        self.answers.clear()
        self._seen.clear()

    def add_group(self, group_id: int, access_token: str, confirmation: str = "") -> None:
        self.groups[group_id] = Group(access_token, confirmation)

    def queue_event(self, group_id: int, event: Mapping[str, Any]) -> None:
        """An event for the community's Bots Long Poll (``group_id`` and an ``event_id`` are filled in)."""
        self.groups[group_id].events.append({"group_id": group_id, "event_id": uuid.uuid4().hex, **event})
        self._arrived.set()

    def expire_keys(self) -> None:
        for group in self.groups.values():
            group.key = ""

    def block(self, peer_id: int | str) -> None:
        self.blocked.add(str(peer_id))

    def add_file(self, name: str, content: bytes) -> str:
        self.files[name] = content
        return f"{self.url}/files/{name}"

    async def deliver(self, url: str, event: Mapping[str, Any], secret: str | None) -> Delivery:
        """POST a Callback API event as VK does (the community's secret goes inside the body)."""
        body = dict(event) | ({"secret": secret} if secret is not None else {})
        return await self._post(url, json.dumps(body).encode(), {"Content-Type": "application/json"})

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        params = await form_params(request)
        call = self._record(request, name, params)
        try:
            group = self._authorize(params)
            failure = self._take_failure()
            if failure is not None and failure.status is not None:
                call.status, call.error = failure.status, "injected"
                return web.Response(status=failure.status, text=f"<html>{failure.status}</html>")
            if failure is not None:
                raise VKError(failure.code or 6)
            if name in ("groups.addCallbackServer", "groups.editCallbackServer"):
                return _ok(await self._save_server(group, params))
            method = self._methods.get(name)
            if method is None:
                raise VKError(3, f"unknown method {name}")
            return _ok(method(group, params))
        except VKError as error:
            call.error = str(error)
            return web.json_response(
                {
                    "error": {
                        "error_code": error.code,
                        "error_msg": str(error),
                        "request_params": [
                            {"key": k, "value": str(v)} for k, v in params.items() if k != "access_token"
                        ],
                    }
                }
            )

    async def _download(self, request: web.Request) -> web.Response:
        content = self.files.get(request.match_info["name"])
        if content is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=content, content_type="audio/ogg")

    def _authorize(self, params: dict[str, Any]) -> int:
        token = params.get("access_token")
        group = next((gid for gid, g in self.groups.items() if g.access_token == token), None)
        if group is None:
            raise VKError(5)
        if not params.get("v"):
            raise VKError(8)
        if "group_id" in params and _int(params["group_id"], "group_id") != group:
            raise VKError(15)
        return group

    def _send(self, group: int, params: dict[str, Any]) -> Any:
        peer = str(params.get("peer_id") or params.get("user_id") or "")
        if not peer:
            raise VKError(100, "peer_id is undefined")
        if "random_id" not in params:
            raise VKError(100, "random_id is a required parameter")
        random_id = _int(params["random_id"], "random_id")
        text = str(params.get("message", ""))
        if not text and not params.get("attachment"):
            raise VKError(100, "message is empty or invalid")
        if len(text) > TEXT_LIMIT:
            raise VKError(914)
        keyboard = _check_keyboard(params["keyboard"]) if "keyboard" in params else None
        if peer in self.blocked:
            raise VKError(901)
        seen = self._seen.get((group, peer, random_id))
        if seen is not None:  # VK: a repeated random_id sends nothing and answers the first message's id
            return seen
        message_id = next(self._ids)
        if random_id:
            self._seen[(group, peer, random_id)] = message_id
        self.sent.append(
            {
                "group_id": group,
                "peer_id": peer,
                "message": text,
                "random_id": random_id,
                "keyboard": keyboard,
                "message_id": message_id,
            }
        )
        return message_id

    def _event_answer(self, group: int, params: dict[str, Any]) -> Any:
        for key in ("event_id", "user_id", "peer_id"):
            if not params.get(key):
                raise VKError(100, f"{key} is a required parameter")
        self.answers.append({k: params[k] for k in ("event_id", "user_id", "peer_id")})
        return 1

    def _servers(self, group: int, params: dict[str, Any]) -> Any:
        servers = self.groups[group].servers
        return {"count": len(servers), "items": servers}

    def _confirmation_code(self, group: int, params: dict[str, Any]) -> Any:
        return {"code": self.groups[group].confirmation}

    def _callback_settings(self, group: int, params: dict[str, Any]) -> Any:
        server_id = _int(params.get("server_id"), "server_id")
        if not any(s["id"] == server_id for s in self.groups[group].servers):
            raise VKError(100, "server_id is invalid")
        self.groups[group].settings[server_id] = {k: v for k, v in params.items() if k not in ("access_token", "v")}
        return 1

    def _long_poll_settings(self, group: int, params: dict[str, Any]) -> Any:
        self.groups[group].long_poll = {k: v for k, v in params.items() if k not in ("access_token", "v")}
        return 1

    def _long_poll_server(self, group: int, params: dict[str, Any]) -> Any:
        if _int(params.get("group_id"), "group_id") != group:
            raise VKError(15)
        if str(self.groups[group].long_poll.get("enabled")) != "1":
            raise VKError(100, "Bots Long Poll is disabled for this community")
        state = self.groups[group]
        state.key = state.key or uuid.uuid4().hex
        return {"key": state.key, "server": f"{self.url}/longpoll/{group}", "ts": str(len(state.events) + 1)}

    async def _long_poll(self, request: web.Request) -> web.Response:
        query = request.query
        self._record(request, "longpoll", dict(query))
        group = self.groups.get(int(request.match_info["group"]))
        if group is None or query.get("act") != "a_check" or not group.key or query.get("key") != group.key:
            return web.json_response({"failed": 2})
        try:
            ts, wait = int(query.get("ts", "")), min(90, int(query.get("wait", "25")))
        except ValueError:
            return web.json_response({"failed": 1, "ts": len(group.events) + 1})
        if not 1 <= ts <= len(group.events) + 1:
            return web.json_response({"failed": 1, "ts": len(group.events) + 1})
        deadline = asyncio.get_running_loop().time() + wait
        while len(group.events) < ts and (left := deadline - asyncio.get_running_loop().time()) > 0:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
        return web.json_response({"ts": str(len(group.events) + 1), "updates": group.events[ts - 1 :]})

    async def _save_server(self, group: int, params: dict[str, Any]) -> Any:
        url, title = str(params.get("url", "")), str(params.get("title", ""))
        if not url:
            raise VKError(100, "url is undefined")
        if not 1 <= len(title) <= TITLE_LIMIT:
            raise VKError(100, f"title should be 1-{TITLE_LIMIT} characters")
        servers = self.groups[group].servers
        if "server_id" in params:
            server = next((s for s in servers if s["id"] == _int(params["server_id"], "server_id")), None)
            if server is None:
                raise VKError(100, "server_id is invalid")
        else:
            server = {"id": next(self._server_ids), "creator_id": 1}
            servers.append(server)
        server |= {"url": url, "title": title, "secret_key": str(params.get("secret_key", ""))}
        server["status"] = await self._confirm(group, server)
        return 1 if "server_id" in params else {"server_id": server["id"]}

    async def _confirm(self, group: int, server: dict[str, Any]) -> str:
        event = {"type": "confirmation", "event_id": uuid.uuid4().hex, "v": "5.199", "group_id": group}
        try:
            answer = await self.deliver(server["url"], event, server["secret_key"] or None)
        except OSError:
            return "failed"
        return "ok" if answer.status == 200 and answer.text == self.groups[group].confirmation else "failed"


def _ok(response: Any) -> web.Response:
    return web.json_response({"response": response})


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise VKError(100, f"{name} not integer") from exc


def _check_keyboard(raw: Any) -> Any:
    try:
        keyboard = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise VKError(911, "not JSON") from exc
    rows = keyboard.get("buttons") if isinstance(keyboard, dict) else None
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise VKError(911, "buttons must be an array of arrays")
    max_rows, max_per_row, max_total = INLINE if keyboard.get("inline") else STANDARD
    if len(rows) > max_rows or any(len(row) > max_per_row for row in rows):
        raise VKError(911, f"at most {max_rows} rows of {max_per_row} buttons")
    buttons = [b for row in rows for b in row]
    if len(buttons) > max_total:
        raise VKError(911, f"at most {max_total} buttons")
    for button in buttons:
        _check_button(button)
    return keyboard


def _check_button(button: Any) -> None:
    action = button.get("action") if isinstance(button, dict) else None
    if not isinstance(action, dict) or action.get("type") not in _BUTTON_TYPES:
        raise VKError(911, "button action type is invalid")
    if action["type"] in ("text", "callback") and not 1 <= len(str(action.get("label", ""))) <= LABEL_LIMIT:
        raise VKError(911, f"button label should be 1-{LABEL_LIMIT} characters")
    payload = action.get("payload")
    if payload is None:
        return
    if not isinstance(payload, str) or len(payload) > PAYLOAD_LIMIT:
        raise VKError(911, f"payload should be a string of at most {PAYLOAD_LIMIT} characters")
    try:
        json.loads(payload)
    except ValueError as exc:
        raise VKError(911, "payload is not JSON") from exc


if __name__ == "__main__":
    parser = cli("VK API double")
    parser.add_argument("--group-id", type=int, required=True)
    parser.add_argument("--access-token", required=True)
    parser.add_argument("--confirmation", default="")
    args = parser.parse_args()
    serve(VKDouble(args.group_id, args.access_token, args.confirmation), args.port)
