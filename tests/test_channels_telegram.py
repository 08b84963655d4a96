"""Telegram adapter against the Bot API double on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from doubles import Double
from doubles.telegram import TelegramDouble

from channels.base import InboundMessage, MediaRef, OutboundMessage, OutButton
from channels.exceptions import BadPayload, BadSignature, PermanentSendError, RetryLater, Unreachable
from channels.render import utf16_len
from channels.settings import TelegramSettings
from channels.telegram import TelegramChannel

FIXTURES = Path(__file__).parents[1] / "fixtures" / "channels" / "telegram"
TOKEN, SECRET, CHAT = "123456:TEST-token", "tg-secret_1", "111222333"


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def reply(text: str = "Hello", buttons: tuple[OutButton, ...] = (), chat: str = CHAT) -> OutboundMessage:
    return OutboundMessage(tenant="demo", channel="telegram", user_id=chat, chat_id=chat, text=text, buttons=buttons)


@pytest_asyncio.fixture(scope="module")
async def double() -> AsyncIterator[TelegramDouble]:
    async with TelegramDouble(TOKEN) as running:
        yield running


@pytest_asyncio.fixture(scope="module")
async def channel(double: TelegramDouble) -> AsyncIterator[TelegramChannel]:
    tg = TelegramChannel(TelegramSettings(token=TOKEN, webhook_secret=SECRET, api_base=double.url))
    yield tg
    await tg.aclose()


@pytest.fixture(autouse=True)
def fresh(double: TelegramDouble) -> None:
    double.reset()


# --- verify and parse ----------------------------------------------------------------------------------


def test_verify_accepts_the_secret_in_any_header_case(channel: TelegramChannel) -> None:
    channel.verify({"X-Telegram-Bot-Api-Secret-Token": SECRET}, b"{}")
    channel.verify({"x-telegram-bot-api-secret-token": SECRET}, b"{}")


@pytest.mark.parametrize(
    "headers", [{}, {"X-Telegram-Bot-Api-Secret-Token": "other"}, {"X-Telegram-Bot-Api-Secret-Token": SECRET + "x"}]
)
def test_verify_rejects_missing_or_wrong_secret(channel: TelegramChannel, headers: dict[str, str]) -> None:
    with pytest.raises(BadSignature):
        channel.verify(headers, b"{}")


def test_parse_text_and_start(channel: TelegramChannel) -> None:
    [msg] = channel.parse("demo", fixture("text")).messages
    assert (msg.tenant, msg.channel, msg.user_id, msg.chat_id, msg.event_id) == (
        "demo",
        "telegram",
        CHAT,
        CHAT,
        "900000101",
    )
    assert msg.text == "Hi, can I get a haircut tomorrow?" and msg.sent_at is not None
    assert channel.parse("demo", fixture("start")).messages[0].text == "/start"


def test_parse_callback_query(channel: TelegramChannel) -> None:
    [msg] = channel.parse("demo", fixture("callback")).messages
    assert (msg.button, msg.text, msg.callback_id, msg.callback_message, msg.chat_id) == (
        "time:17:00",
        "",
        "4382bfdwdsb323b2d9",
        "41",
        CHAT,
    )


def test_parse_voice_and_contact(channel: TelegramChannel) -> None:
    [voice] = channel.parse("demo", fixture("voice")).messages
    assert voice.voice == MediaRef(id="AwACAgIAAxkBAAIBY2VoZXZvaWNlMDAxAAJ-RwACr1bxSUZ3ZwABHgABJzQE", mime="audio/ogg")
    [contact] = channel.parse("demo", fixture("contact")).messages
    assert contact.phone == "+447700900123"


@pytest.mark.parametrize("name", ["edited", "sticker", "photo", "location", "my_chat_member"])
def test_other_updates_are_acknowledged_and_ignored(channel: TelegramChannel, name: str) -> None:
    result = channel.parse("demo", fixture(name))
    assert result.messages == [] and result.reply is None


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"message": {"text": "no update_id"}}'])
def test_parse_rejects_what_telegram_never_sends(channel: TelegramChannel, body: bytes) -> None:
    with pytest.raises(BadPayload):
        channel.parse("demo", body)


def test_fields_we_do_not_read_are_not_validated(channel: TelegramChannel) -> None:
    """A field Telegram adds or reshapes that we never read must not turn a customer's message into a 400."""
    update = json.loads(fixture("text"))
    update["message"]["entities"] = "a shape no Bot API version has"
    update["message"]["new_field_of_2027"] = {"x": 1}
    [msg] = channel.parse("demo", json.dumps(update).encode()).messages
    assert msg.text == "Hi, can I get a haircut tomorrow?"


@pytest.mark.parametrize("path", [("update_id",), ("message", "chat", "id"), ("message", "from", "id")])
def test_ids_outside_64_bits_are_refused(channel: TelegramChannel, path: tuple[str, ...]) -> None:
    update = json.loads(fixture("text"))
    *parents, last = path
    target = update
    for key in parents:
        target = target[key]
    target[last] = 2**64
    with pytest.raises(BadPayload):
        channel.parse("demo", json.dumps(update).encode())


# --- send ----------------------------------------------------------------------------------------------


async def test_send_text(channel: TelegramChannel, double: TelegramDouble) -> None:
    await channel.send(reply("Hi Anna"))
    [sent] = double.sent
    assert (sent["chat_id"], sent["text"], sent["reply_markup"]) == (CHAT, "Hi Anna", None)


async def test_send_buttons_as_inline_keyboard(channel: TelegramChannel, double: TelegramDouble) -> None:
    times = tuple(OutButton(label=f"1{h}:00", data=f"time:1{h}:00") for h in range(5))
    await channel.send(reply("Pick a time", times))
    rows = double.sent[0]["reply_markup"]["inline_keyboard"]
    assert [len(row) for row in rows] == [4, 1]
    assert rows[0][0] == {"text": "10:00", "callback_data": "time:10:00"}


async def test_long_text_is_split_with_the_keyboard_on_the_last_part(
    channel: TelegramChannel, double: TelegramDouble
) -> None:
    text = "\n".join(f"line {i} 😀 " + "x" * 60 for i in range(100))
    await channel.send(reply(text, (OutButton(label="OK", data="ok"),)))
    assert len(double.sent) == 2
    assert all(utf16_len(s["text"]) <= 4096 for s in double.sent)
    assert double.sent[0]["reply_markup"] is None and double.sent[1]["reply_markup"] is not None
    assert "\n".join(s["text"] for s in double.sent) == text


async def test_callback_data_over_64_bytes_is_refused_before_sending(
    channel: TelegramChannel, double: TelegramDouble
) -> None:
    fits = OutButton(label="Стрижка", data="service:" + "ы" * 28)  # 8 + 56 = 64 bytes
    await channel.send(reply("ok", (fits,)))
    too_long = OutButton(label="Стрижка", data="service:" + "ы" * 29)  # 37 characters, 66 bytes
    with pytest.raises(PermanentSendError, match="66 bytes"):
        await channel.send(reply("no", (too_long,)))
    assert len(double.sent) == 1


async def test_more_buttons_than_a_keyboard_holds_become_numbered_text(
    channel: TelegramChannel, double: TelegramDouble
) -> None:
    many = tuple(OutButton(label=f"slot {i}", data=f"s{i}") for i in range(101))
    await channel.send(reply("Pick", many))
    assert double.sent[0]["reply_markup"] is None
    assert double.sent[0]["text"].startswith("Pick\n\n1) slot 0\n2) slot 1")


async def test_429_becomes_retry_later_with_retry_after(channel: TelegramChannel, double: TelegramDouble) -> None:
    double.fail_next(status=429, retry_after=7)
    with pytest.raises(RetryLater) as caught:
        await channel.send(reply())
    assert caught.value.retry_after == 7
    await channel.send(reply())  # the next call goes through
    assert len(double.sent) == 1


async def test_server_errors_become_retry_later(channel: TelegramChannel, double: TelegramDouble) -> None:
    double.fail_next(status=502)
    with pytest.raises(RetryLater) as caught:
        await channel.send(reply())
    assert caught.value.retry_after is None


async def test_blocked_user_is_unreachable(channel: TelegramChannel, double: TelegramDouble) -> None:
    double.block("999")
    with pytest.raises(Unreachable, match="blocked"):
        await channel.send(reply(chat="999"))


async def test_bad_token_is_permanent(double: TelegramDouble) -> None:
    wrong = TelegramChannel(TelegramSettings(token="123456:wrong", webhook_secret=SECRET, api_base=double.url))
    try:
        with pytest.raises(PermanentSendError, match="Unauthorized"):
            await wrong.send(reply())
    finally:
        await wrong.aclose()


async def test_unreachable_api_is_retry_later() -> None:
    gone = TelegramChannel(TelegramSettings(token=TOKEN, webhook_secret=SECRET, api_base="http://127.0.0.1:9"))
    try:
        with pytest.raises(RetryLater):
            await gone.send(reply())
    finally:
        await gone.aclose()


# --- buttons, media, webhook -----------------------------------------------------------------------------


async def test_ack_button_answers_and_removes_the_keyboard(channel: TelegramChannel, double: TelegramDouble) -> None:
    await channel.send(reply("Pick", (OutButton(label="17:00", data="time:17:00"),)))
    message_id = double.sent[0]["message_id"]
    press = InboundMessage(
        tenant="demo",
        channel="telegram",
        user_id=CHAT,
        chat_id=CHAT,
        event_id="1",
        button="time:17:00",
        callback_id="cb-1",
        callback_message=str(message_id),
    )
    await channel.ack_button(press)
    assert double.answered == ["cb-1"]
    assert double.keyboards[(CHAT, message_id)] is None
    await channel.ack_button(press)  # a retried ack: Telegram says "too old" / "not modified", nothing to do
    assert [c.status for c in double.calls_to("answerCallbackQuery")] == [200, 400]


async def test_ack_button_without_callback_is_a_no_op(channel: TelegramChannel, double: TelegramDouble) -> None:
    await channel.ack_button(InboundMessage(tenant="demo", channel="telegram", user_id=CHAT, event_id="2", text="x"))
    assert double.calls == []


async def test_fetch_media_through_get_file(channel: TelegramChannel, double: TelegramDouble) -> None:
    double.add_file("voice-1", b"OggS fake opus")
    assert await channel.fetch_media(MediaRef(id="voice-1")) == b"OggS fake opus"
    with pytest.raises(PermanentSendError, match="invalid file_id"):
        await channel.fetch_media(MediaRef(id="nope"))


async def test_set_webhook(channel: TelegramChannel, double: TelegramDouble) -> None:
    await channel.set_webhook("https://bot.example.com/webhooks/telegram/demo")
    hook = double.webhooks[TOKEN]
    assert hook["url"] == "https://bot.example.com/webhooks/telegram/demo"
    assert hook["secret_token"] == SECRET and hook["allowed_updates"] == ["message", "callback_query"]


async def test_delivered_update_verifies_and_parses(channel: TelegramChannel, double: TelegramDouble) -> None:
    """The double posts a webhook the way Telegram does; our verify + parse accept it end to end."""
    received: list[InboundMessage] = []

    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            channel.verify(request.headers, body)
        except BadSignature:
            return web.Response(status=403)
        received.extend(channel.parse("demo", body).messages)
        return web.Response()

    sink = Double()
    sink.app.router.add_post("/hook", webhook)
    async with sink:
        update = json.loads(fixture("text"))
        assert (await double.deliver(f"{sink.url}/hook", update, SECRET)).status == 200
        assert (await double.deliver(f"{sink.url}/hook", update, "forged")).status == 403
    assert [m.text for m in received] == ["Hi, can I get a haircut tomorrow?"]


# --- the double itself checks what it receives ---------------------------------------------------------------


async def test_double_refuses_what_telegram_refuses(double: TelegramDouble) -> None:
    async with httpx.AsyncClient(base_url=f"{double.url}/bot{TOKEN}") as http:
        bad_data = {"inline_keyboard": [[{"text": "x", "callback_data": "é" * 33}]]}
        answer = (await http.post("/sendMessage", json={"chat_id": 1, "text": "x", "reply_markup": bad_data})).json()
        assert answer == {"ok": False, "error_code": 400, "description": "Bad Request: BUTTON_DATA_INVALID"}
        answer = (await http.post("/sendMessage", data={"chat_id": "1", "text": "x" * 4097})).json()
        assert answer["description"] == "Bad Request: message is too long"
        no_action = {"inline_keyboard": [[{"text": "x"}]]}
        answer = (await http.post("/sendMessage", json={"chat_id": 1, "text": "x", "reply_markup": no_action})).json()
        assert answer["error_code"] == 400
        assert (await http.post("/noSuchMethod")).json()["error_code"] == 404


def test_double_runs_in_a_thread_for_synchronous_callers() -> None:
    with TelegramDouble(TOKEN).in_thread() as url:
        answer = httpx.get(f"{url}/bot{TOKEN}/getMe").json()
    assert answer["ok"] is True and answer["result"]["id"] == 123456
