"""VK adapter against the VK API double on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from doubles import Double
from doubles.vk import VKDouble

from channels.base import InboundMessage, MediaRef, OutboundMessage, OutButton
from channels.exceptions import BadPayload, BadSignature, PermanentSendError, RetryLater, Unreachable
from channels.settings import VKSettings
from channels.vk import VKChannel, random_id

FIXTURES = Path(__file__).parents[1] / "fixtures" / "channels" / "vk"
GROUP, TOKEN, SECRET, CONFIRMATION = 218412345, "vk1.a.community-token", "vk-secret-1", "1a2b3c4d"
USER = "55501234"


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def settings(url: str, **overrides: Any) -> VKSettings:
    base = {
        "group_id": GROUP,
        "access_token": TOKEN,
        "secret": SECRET,
        "confirmation": CONFIRMATION,
        "api_base": f"{url}/method",
    }
    return VKSettings(**(base | overrides))


def reply(
    text: str = "Hello", buttons: tuple[OutButton, ...] = (), event: str = "ev-1", index: int = 0, user: str = USER
) -> OutboundMessage:
    return OutboundMessage(
        tenant="demo", channel="vk", user_id=user, text=text, buttons=buttons, event_id=event, index=index
    )


def options(*labels: str) -> tuple[OutButton, ...]:
    return tuple(OutButton(label=label, data=f"opt:{i}") for i, label in enumerate(labels))


@pytest_asyncio.fixture(scope="module")
async def double() -> AsyncIterator[VKDouble]:
    async with VKDouble(GROUP, TOKEN, CONFIRMATION) as running:
        yield running


@pytest_asyncio.fixture(scope="module")
async def channel(double: VKDouble) -> AsyncIterator[VKChannel]:
    vk = VKChannel(settings(double.url))
    yield vk
    await vk.aclose()


@pytest.fixture(autouse=True)
def fresh(double: VKDouble) -> None:
    double.reset()


# --- verify and parse ----------------------------------------------------------------------------------


def test_verify_checks_the_secret_and_community(channel: VKChannel) -> None:
    channel.verify({}, fixture("text"))
    event = json.loads(fixture("text"))
    for forged in (
        event | {"secret": "guess"},
        {k: v for k, v in event.items() if k != "secret"},
        event | {"group_id": 1},
    ):
        with pytest.raises(BadSignature):
            channel.verify({}, json.dumps(forged).encode())


@pytest.mark.parametrize("body", [b"", b"ok", b"[]", b'{"type": "message_new"}'])
def test_malformed_bodies(channel: VKChannel, body: bytes) -> None:
    with pytest.raises(BadPayload):
        channel.verify({}, body)
    with pytest.raises(BadPayload):
        channel.parse("demo", body)


def test_confirmation_is_answered_with_the_tenants_string(channel: VKChannel) -> None:
    result = channel.parse("demo", fixture("confirmation"))
    assert (result.messages, result.reply) == ([], CONFIRMATION)


def test_parse_text(channel: VKChannel) -> None:
    result = channel.parse("demo", fixture("text"))
    [msg] = result.messages
    assert result.reply == "ok"
    assert (msg.channel, msg.user_id, msg.chat_id, msg.event_id, msg.text) == (
        "vk",
        USER,
        None,
        "3f2a1b8c9d0e4f5a6b7c8d9e0f1a2b3c4d5e6f70",
        "Hi, can I get a haircut tomorrow?",
    )


def test_parse_keyboard_payload_and_start_button(channel: VKChannel) -> None:
    [pressed] = channel.parse("demo", fixture("button")).messages
    assert (pressed.button, pressed.text) == ("time:17:00", "")
    [start] = channel.parse("demo", fixture("start")).messages  # VK's own "Start": not one of our buttons
    assert (start.button, start.text) == (None, "Начать")


def test_parse_callback_button(channel: VKChannel) -> None:
    [msg] = channel.parse("demo", fixture("callback")).messages
    assert (msg.button, msg.callback_id, msg.callback_message, msg.chat_id) == (
        "time:17:30",
        "d4b2c9e1a7f3",
        "102",
        USER,
    )


def test_parse_voice(channel: VKChannel) -> None:
    [msg] = channel.parse("demo", fixture("voice")).messages
    assert msg.voice == MediaRef(
        id=f"{USER}_683540127", mime="audio/ogg", url="https://psv4.userapi.com/s/v1/amsg/c1/audio_msg/683540127.ogg"
    )


def test_parse_voice_with_only_an_mp3_link(channel: VKChannel) -> None:
    event = json.loads(fixture("voice"))
    del event["object"]["message"]["attachments"][0]["audio_message"]["link_ogg"]
    [msg] = channel.parse("demo", json.dumps(event).encode()).messages
    assert msg.voice is not None and msg.voice.mime == "audio/mpeg"
    assert msg.voice.url == "https://psv4.userapi.com/s/v1/amsg/c1/audio_msg/683540127.mp3"


@pytest.mark.parametrize("name", ["edited", "sticker", "photo", "location", "typing"])
def test_other_events_answer_ok_with_no_message(channel: VKChannel, name: str) -> None:
    result = channel.parse("demo", fixture(name))
    assert (result.messages, result.reply) == ([], "ok")


def test_message_without_event_id_is_refused(channel: VKChannel) -> None:
    event = json.loads(fixture("text"))
    del event["event_id"]
    with pytest.raises(BadPayload, match="event_id"):
        channel.parse("demo", json.dumps(event).encode())


# --- random_id -----------------------------------------------------------------------------------------------


def test_random_id_is_deterministic_31_bit_and_distinct() -> None:
    ids = {random_id(f"event-{e}", i, p) for e in range(50) for i in range(4) for p in range(3)}
    assert len(ids) == 600 and all(0 < r < 2**31 for r in ids)
    assert random_id("event-7", 1, 0) == random_id("event-7", 1, 0)
    assert random_id("", 0) == 0  # no event to derive from: VK's de-duplication off


# --- send ----------------------------------------------------------------------------------------------


async def test_send_text(channel: VKChannel, double: VKDouble) -> None:
    await channel.send(reply("Hi Anna", event="ev-text", index=1))
    [sent] = double.sent
    assert (sent["peer_id"], sent["message"], sent["keyboard"]) == (USER, "Hi Anna", None)
    assert sent["random_id"] == random_id("ev-text", 1, 0)
    params = double.calls[0].params
    assert params["access_token"] == TOKEN and params["v"] == "5.199"


async def test_a_retried_send_is_not_delivered_twice(channel: VKChannel, double: VKDouble) -> None:
    await channel.send(reply("Booked for 17:00", event="ev-retry"))
    await channel.send(reply("Booked for 17:00", event="ev-retry"))  # the worker retried the job
    await channel.send(reply("And a second reply", event="ev-retry", index=1))
    assert [s["message"] for s in double.sent] == ["Booked for 17:00", "And a second reply"]
    assert len(double.calls_to("messages.send")) == 3


async def test_buttons_as_inline_callback_keyboard(channel: VKChannel, double: VKDouble) -> None:
    label = "Hair colouring with a toner, gloss and a blow-dry"
    await channel.send(reply("Which?", options("Haircut", label, "Manicure")))
    keyboard = double.sent[0]["keyboard"]
    assert keyboard["inline"] is True
    buttons = [b for row in keyboard["buttons"] for b in row]
    assert [b["action"]["type"] for b in buttons] == ["callback"] * 3
    assert json.loads(buttons[0]["action"]["payload"]) == {"b": "opt:0"}
    assert len(buttons[1]["action"]["label"]) == 40 and buttons[1]["action"]["label"].endswith("…")


async def test_ten_buttons_fit_more_become_numbered_text(channel: VKChannel, double: VKDouble) -> None:
    await channel.send(reply("When?", options(*(f"1{i}:00" for i in range(10)))))
    rows = double.sent[0]["keyboard"]["buttons"]
    assert sum(len(r) for r in rows) == 10 and len(rows) <= 6
    await channel.send(reply("When?", options(*(f"slot {i}" for i in range(11))), event="ev-2"))
    assert double.sent[1]["keyboard"] is None and double.sent[1]["message"].startswith("When?\n\n1) slot 0")


async def test_long_text_parts_get_their_own_random_ids(channel: VKChannel, double: VKDouble) -> None:
    text = " ".join(f"word{i}" for i in range(1000))
    await channel.send(reply(text, options("OK"), event="ev-long"))
    assert [s["random_id"] for s in double.sent] == [random_id("ev-long", 0, p) for p in range(len(double.sent))]
    assert len(double.sent) == 2 and double.sent[0]["keyboard"] is None and double.sent[1]["keyboard"]
    assert " ".join(s["message"] for s in double.sent) == text


@pytest.mark.parametrize(("code", "retry_after"), [(9, None), (6, 1.0), (10, None)])
async def test_flood_and_rate_errors_back_off(
    channel: VKChannel, double: VKDouble, code: int, retry_after: float | None
) -> None:
    double.fail_next(code=code)
    with pytest.raises(RetryLater) as caught:
        await channel.send(reply())
    assert caught.value.retry_after == retry_after and f"error {code}" in str(caught.value)


async def test_http_errors_back_off(channel: VKChannel, double: VKDouble) -> None:
    double.fail_next(status=502)
    with pytest.raises(RetryLater, match="502"):
        await channel.send(reply())


async def test_user_without_permission_is_unreachable(channel: VKChannel, double: VKDouble) -> None:
    double.block("777")
    with pytest.raises(Unreachable, match="901"):
        await channel.send(reply(user="777"))


async def test_other_errors_are_permanent(double: VKDouble) -> None:
    wrong = VKChannel(settings(double.url, access_token="stolen"))
    try:
        with pytest.raises(PermanentSendError, match="error 5"):
            await wrong.send(reply())
    finally:
        await wrong.aclose()


# --- buttons, media, webhook -----------------------------------------------------------------------------


async def test_ack_button_answers_the_event(channel: VKChannel, double: VKDouble) -> None:
    [press] = channel.parse("demo", fixture("callback")).messages
    await channel.ack_button(press)
    assert double.answers == [{"event_id": "d4b2c9e1a7f3", "user_id": USER, "peer_id": USER}]
    [typed] = channel.parse("demo", fixture("text")).messages
    await channel.ack_button(typed)
    assert len(double.answers) == 1


async def test_fetch_voice_from_its_link(channel: VKChannel, double: VKDouble) -> None:
    url = double.add_file("683540127.ogg", b"OggS vk voice")
    assert await channel.fetch_media(MediaRef(id="1_2", url=url)) == b"OggS vk voice"
    with pytest.raises(PermanentSendError):
        await channel.fetch_media(MediaRef(id="1_3", url=f"{double.url}/files/missing.ogg"))
    with pytest.raises(PermanentSendError):
        await channel.fetch_media(MediaRef(id="1_4"))


async def _webhook_sink(channel: VKChannel, received: list[InboundMessage]) -> Double:
    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            channel.verify(request.headers, body)
        except BadSignature:
            return web.Response(status=403)
        result = channel.parse("demo", body)
        received.extend(result.messages)
        return web.Response(text=result.reply or "")

    sink = Double()
    sink.app.router.add_post("/hook", webhook)
    await sink.start()
    return sink


async def test_set_webhook_confirms_and_subscribes(channel: VKChannel, double: VKDouble) -> None:
    sink = await _webhook_sink(channel, [])
    try:
        await channel.set_webhook(f"{sink.url}/hook")
        await channel.set_webhook(f"{sink.url}/hook")  # again: the same server is updated, not duplicated
    finally:
        await sink.stop()
    [server] = double.groups[GROUP].servers
    assert (server["url"], server["secret_key"], server["status"]) == (f"{sink.url}/hook", SECRET, "ok")
    subscribed = double.groups[GROUP].settings[server["id"]]
    assert subscribed["message_new"] == "1" and subscribed["message_event"] == "1"
    assert subscribed["api_version"] == "5.199"


async def test_delivered_events_verify_and_parse(channel: VKChannel, double: VKDouble) -> None:
    received: list[InboundMessage] = []
    sink = await _webhook_sink(channel, received)
    try:
        event = json.loads(fixture("button"))
        answer = await double.deliver(f"{sink.url}/hook", event, SECRET)
        assert (answer.status, answer.text) == (200, "ok")
        assert (await double.deliver(f"{sink.url}/hook", event, "forged")).status == 403
    finally:
        await sink.stop()
    assert [m.button for m in received] == ["time:17:00"]


# --- the double itself checks what it receives ---------------------------------------------------------------


async def test_double_refuses_what_vk_refuses(double: VKDouble) -> None:
    def keyboard(count: int, label: str = "x") -> str:
        button = {"action": {"type": "callback", "label": label, "payload": "{}"}}
        return json.dumps({"inline": True, "buttons": [[button] for _ in range(count)]})

    auth = {"access_token": TOKEN, "v": "5.199", "peer_id": "1", "message": "x"}
    async with httpx.AsyncClient(base_url=f"{double.url}/method") as http:
        for extra in ({"random_id": 1, "keyboard": keyboard(7)}, {"random_id": 2, "keyboard": keyboard(1, "x" * 41)}):
            answer = (await http.post("/messages.send", data=auth | extra)).json()
            assert answer["error"]["error_code"] == 911
        answer = (await http.post("/messages.send", data=auth)).json()
        assert answer["error"]["error_code"] == 100 and "random_id" in answer["error"]["error_msg"]
        answer = (await http.post("/messages.send", data=auth | {"random_id": 3, "message": "x" * 4097})).json()
        assert answer["error"]["error_code"] == 914
        answer = (await http.post("/messages.send", data={"v": "5.199", "peer_id": "1", "random_id": 4})).json()
        assert answer["error"]["error_code"] == 5
    assert double.sent == []
