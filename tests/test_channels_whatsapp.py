"""WhatsApp Cloud API adapter against the Graph API double on loopback."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from doubles import Double
from doubles.whatsapp import WhatsAppDouble, signature

from channels.base import InboundMessage, MediaRef, OutboundMessage, OutButton
from channels.exceptions import BadPayload, BadSignature, PermanentSendError, RetryLater
from channels.settings import WhatsAppSettings
from channels.whatsapp import WhatsAppChannel

FIXTURES = Path(__file__).parents[1] / "fixtures" / "channels" / "whatsapp"
PHONE_ID, TOKEN, APP_SECRET, VERIFY = "106540352242922", "EAAG-test-token", "app-secret-1", "verify-me"
USER = "447700900123"


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def settings(url: str, **overrides: Any) -> WhatsAppSettings:
    base = {
        "phone_number_id": PHONE_ID,
        "access_token": TOKEN,
        "app_secret": APP_SECRET,
        "verify_token": VERIFY,
        "graph_base": url,
    }
    return WhatsAppSettings(**(base | overrides))


def reply(text: str = "Hello", buttons: tuple[OutButton, ...] = (), user: str = USER) -> OutboundMessage:
    return OutboundMessage(tenant="demo", channel="whatsapp", user_id=user, text=text, buttons=buttons)


def options(*labels: str) -> tuple[OutButton, ...]:
    return tuple(OutButton(label=label, data=f"opt:{i}") for i, label in enumerate(labels))


@pytest_asyncio.fixture(scope="module")
async def double() -> AsyncIterator[WhatsAppDouble]:
    async with WhatsAppDouble(PHONE_ID, TOKEN) as running:
        yield running


@pytest_asyncio.fixture(scope="module")
async def channel(double: WhatsAppDouble) -> AsyncIterator[WhatsAppChannel]:
    wa = WhatsAppChannel(settings(double.url))
    yield wa
    await wa.aclose()


@pytest.fixture(autouse=True)
def fresh(double: WhatsAppDouble) -> None:
    double.reset()


# --- verify and parse ----------------------------------------------------------------------------------


def test_verify_signature(channel: WhatsAppChannel) -> None:
    body = fixture("text")
    channel.verify({"X-Hub-Signature-256": signature(body, APP_SECRET)}, body)
    channel.verify({"x-hub-signature-256": signature(body, APP_SECRET)}, body)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Hub-Signature-256": signature(b"other body", APP_SECRET)},
        {"X-Hub-Signature-256": signature(b"", "another-app")},
        {"X-Hub-Signature-256": "garbage"},
    ],
)
def test_verify_rejects_bad_signatures(channel: WhatsAppChannel, headers: dict[str, str]) -> None:
    with pytest.raises(BadSignature):
        channel.verify(headers, fixture("text"))


def test_subscription_handshake(channel: WhatsAppChannel) -> None:
    params = {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": VERIFY}
    assert channel.verify_subscription(params) == "1158201444"
    with pytest.raises(BadSignature):
        channel.verify_subscription(params | {"hub.verify_token": "guess"})
    with pytest.raises(BadPayload):
        channel.verify_subscription({"hub.challenge": "1"})


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("text", {"text": "Hi, can I get a haircut tomorrow?"}),
        ("button_reply", {"button": "time:17:00", "text": ""}),
        ("list_reply", {"button": "service:colouring"}),
        ("button", {"button": "reminder:confirm"}),
        ("contact", {"phone": "+447700900123"}),
    ],
)
def test_parse_messages(channel: WhatsAppChannel, name: str, expected: dict[str, Any]) -> None:
    [msg] = channel.parse("demo", fixture(name)).messages
    assert (msg.channel, msg.user_id, msg.chat_id) == ("whatsapp", USER, None)
    assert msg.event_id.startswith("wamid.") and msg.sent_at is not None
    assert {key: getattr(msg, key) for key in expected} == expected


def test_parse_voice(channel: WhatsAppChannel) -> None:
    [msg] = channel.parse("demo", fixture("voice")).messages
    assert msg.voice == MediaRef(id="1003383421387256", mime="audio/ogg; codecs=opus")


def test_user_keyed_by_business_scoped_id(channel: WhatsAppChannel) -> None:
    [msg] = channel.parse("demo", fixture("bsuid_text")).messages
    assert (msg.user_id, msg.chat_id) == ("GB.13491208655302741918", None)
    with_phone = json.loads(fixture("text"))
    with_phone["entry"][0]["changes"][0]["value"]["contacts"][0]["user_id"] = "GB.1349"
    [msg] = channel.parse("demo", json.dumps(with_phone).encode()).messages
    assert (msg.user_id, msg.chat_id) == ("GB.1349", USER)  # keyed by the id, answered on the phone


@pytest.mark.parametrize("name", ["statuses", "sticker", "photo", "location", "other_number"])
def test_ignored_events(channel: WhatsAppChannel, name: str) -> None:
    assert channel.parse("demo", fixture(name)).messages == []


@pytest.mark.parametrize(
    "body", [b"", b"{", b'{"object": "page", "entry": []}', b'{"object": "whatsapp_business_account"}']
)
def test_parse_rejects_what_meta_never_sends(channel: WhatsAppChannel, body: bytes) -> None:
    with pytest.raises(BadPayload):
        channel.parse("demo", body)


# --- send ----------------------------------------------------------------------------------------------


async def test_send_text(channel: WhatsAppChannel, double: WhatsAppDouble) -> None:
    await channel.send(reply("Hi Anna"))
    assert double.sent == [
        {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": USER,
            "type": "text",
            "text": {"body": "Hi Anna", "preview_url": False},
        }
    ]
    assert double.calls[0].headers["Authorization"] == f"Bearer {TOKEN}"


async def test_business_scoped_user_goes_in_recipient(channel: WhatsAppChannel, double: WhatsAppDouble) -> None:
    await channel.send(reply(user="GB.13491208655302741918"))
    assert double.sent[0]["recipient"] == "GB.13491208655302741918" and "to" not in double.sent[0]


async def test_up_to_three_short_options_are_reply_buttons(channel: WhatsAppChannel, double: WhatsAppDouble) -> None:
    await channel.send(reply("Pick a time", options("17:00", "17:30", "18:00")))
    interactive = double.sent[0]["interactive"]
    assert interactive["type"] == "button" and interactive["body"] == {"text": "Pick a time"}
    assert [b["reply"] for b in interactive["action"]["buttons"]] == [
        {"id": "opt:0", "title": "17:00"},
        {"id": "opt:1", "title": "17:30"},
        {"id": "opt:2", "title": "18:00"},
    ]


async def test_long_labels_or_more_options_become_a_list(channel: WhatsAppChannel, double: WhatsAppDouble) -> None:
    await channel.send(reply("Which service?", options("Haircut", "Hair colouring with a toner and gloss")))
    rows = double.sent[0]["interactive"]["action"]["sections"][0]["rows"]
    assert rows[0] == {"id": "opt:0", "title": "Haircut"}
    assert rows[1]["title"] == "Hair colouring with a t…" and len(rows[1]["title"]) == 24
    assert rows[1]["description"] == "Hair colouring with a toner and gloss"
    await channel.send(reply("When?", options(*(f"1{i}:00" for i in range(10)))))
    assert len(double.sent[1]["interactive"]["action"]["sections"][0]["rows"]) == 10
    assert double.sent[1]["interactive"]["action"]["button"] == "Choose"


async def test_more_than_ten_options_become_numbered_text(channel: WhatsAppChannel, double: WhatsAppDouble) -> None:
    await channel.send(reply("When?", options(*(f"slot {i}" for i in range(11)))))
    [sent] = double.sent
    assert sent["type"] == "text" and sent["text"]["body"].startswith("When?\n\n1) slot 0\n")


async def test_long_text_with_buttons_keeps_the_body_within_1024(
    channel: WhatsAppChannel, double: WhatsAppDouble
) -> None:
    text = " ".join(f"word{i}" for i in range(1000))  # about 6,900 characters
    await channel.send(reply(text, options("Yes", "No")))
    kinds = [s["type"] for s in double.sent]
    assert kinds[-1] == "interactive" and set(kinds[:-1]) == {"text"} and len(kinds) >= 3
    assert len(double.sent[-1]["interactive"]["body"]["text"]) <= 1024
    pieces = [s["text"]["body"] for s in double.sent[:-1]] + [double.sent[-1]["interactive"]["body"]["text"]]
    assert " ".join(pieces) == text


@pytest.mark.parametrize("code", [130429, 131056])
async def test_rate_limit_codes_back_off(channel: WhatsAppChannel, double: WhatsAppDouble, code: int) -> None:
    double.fail_next(code=code)
    with pytest.raises(RetryLater, match=str(code)):
        await channel.send(reply())


async def test_server_errors_back_off(channel: WhatsAppChannel, double: WhatsAppDouble) -> None:
    double.fail_next(status=503)
    with pytest.raises(RetryLater):
        await channel.send(reply())


async def test_outside_24h_window_is_permanent_and_logged(
    channel: WhatsAppChannel, double: WhatsAppDouble, caplog: pytest.LogCaptureFixture
) -> None:
    double.fail_next(code=131047)
    with caplog.at_level(logging.WARNING, logger="channels.whatsapp"), pytest.raises(PermanentSendError):
        await channel.send(reply())
    assert "24 h" in caplog.text and "131047" in caplog.text


async def test_wrong_token_is_permanent(double: WhatsAppDouble) -> None:
    wrong = WhatsAppChannel(settings(double.url, access_token="stolen"))
    try:
        with pytest.raises(PermanentSendError, match="#190"):
            await wrong.send(reply())
    finally:
        await wrong.aclose()


async def test_unreachable_graph_is_retry_later() -> None:
    gone = WhatsAppChannel(settings("http://127.0.0.1:9"))
    try:
        with pytest.raises(RetryLater):
            await gone.send(reply())
    finally:
        await gone.aclose()


# --- media, webhook ------------------------------------------------------------------------------------


async def test_fetch_media_through_its_url(channel: WhatsAppChannel, double: WhatsAppDouble) -> None:
    double.add_media("1003383421387256", b"OggS voice bytes")
    assert await channel.fetch_media(MediaRef(id="1003383421387256")) == b"OggS voice bytes"
    assert [c.method for c in double.calls] == ["media", "download"]
    with pytest.raises(PermanentSendError):
        await channel.fetch_media(MediaRef(id="404"))


async def _webhook_sink(channel: WhatsAppChannel, received: list[InboundMessage]) -> Double:
    async def handshake(request: web.Request) -> web.Response:
        try:
            return web.Response(text=channel.verify_subscription(request.query))
        except BadSignature:
            return web.Response(status=403)

    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            channel.verify(request.headers, body)
        except BadSignature:
            return web.Response(status=401)
        received.extend(channel.parse("demo", body).messages)
        return web.Response()

    sink = Double()
    sink.app.router.add_get("/hook", handshake)
    sink.app.router.add_post("/hook", webhook)
    await sink.start()
    return sink


async def test_set_webhook_passes_the_handshake(channel: WhatsAppChannel, double: WhatsAppDouble) -> None:
    sink = await _webhook_sink(channel, [])
    try:
        await channel.set_webhook(f"{sink.url}/hook")
        assert double.webhooks[PHONE_ID] == f"{sink.url}/hook"
        other = WhatsAppChannel(settings(double.url, verify_token="not-what-the-sink-expects"))
        with pytest.raises(PermanentSendError, match="#2200"):
            await other.set_webhook(f"{sink.url}/hook")
        await other.aclose()
    finally:
        await sink.stop()


async def test_delivered_webhook_verifies_and_parses(channel: WhatsAppChannel, double: WhatsAppDouble) -> None:
    received: list[InboundMessage] = []
    sink = await _webhook_sink(channel, received)
    try:
        payload = json.loads(fixture("button_reply"))
        assert (await double.deliver(f"{sink.url}/hook", payload, APP_SECRET)).status == 200
        assert (await double.deliver(f"{sink.url}/hook", payload, "other-app")).status == 401
    finally:
        await sink.stop()
    assert [m.button for m in received] == ["time:17:00"]


# --- the double itself checks what it receives ---------------------------------------------------------------


async def test_double_refuses_what_graph_refuses(double: WhatsAppDouble) -> None:
    def buttons(*titles: str) -> dict[str, Any]:
        replies = [{"type": "reply", "reply": {"id": f"b{i}", "title": t}} for i, t in enumerate(titles)]
        return {
            "messaging_product": "whatsapp",
            "to": USER,
            "type": "interactive",
            "interactive": {"type": "button", "body": {"text": "x"}, "action": {"buttons": replies}},
        }

    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=f"{double.url}/v21.0/{PHONE_ID}", headers=headers) as http:
        for body in (buttons("a", "b", "c", "d"), buttons("x" * 21), buttons("same", "same")):
            answer = await http.post("/messages", json=body)
            assert answer.status_code == 400 and answer.json()["error"]["code"] == 131009
            assert {"message", "type", "code", "fbtrace_id"} <= answer.json()["error"].keys()
        answer = await http.post(
            "/messages", json={"messaging_product": "whatsapp", "type": "text", "text": {"body": "x"}}
        )
        assert answer.json()["error"]["code"] == 131008
    assert double.sent == []
