"""End to end, per channel: a provider double posts a realistic webhook (fixtures/channels, signed as the
vendor signs it) to the real server; the in-process drain runs the real pipeline; the double receives the
reply. Also: redelivery is a no-op, a 429 is retried, tenants are isolated, and set-webhooks registers the
URLs with each double (which check them against this server, as the vendors do)."""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from _stack import A, B, Stack, fixture, stack
from sqlalchemy import text

from bot.channelset import set_webhooks
from channels.telegram import UPDATES

_ids = itertools.count(1)
SERVICES = {"Haircut", "Manicure", "Hair colouring"}


@pytest.fixture(scope="module")
async def s(services_env: dict[str, str]) -> AsyncIterator[Stack]:
    async with stack(services_env) as st:
        yield st


@pytest.fixture(autouse=True)
def fresh_doubles(s: Stack) -> None:
    s.reset()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


def user_id() -> int:
    """A new customer per test: conversations never carry over between tests."""
    return 500_000_000 + next(_ids)


# --- Telegram ---------------------------------------------------------------------------------------------


def tg_update(name: str, user: int, **message: Any) -> dict[str, Any]:
    update = copy.deepcopy(fixture("telegram", name, update_id=910_000_000 + next(_ids)))
    body = update.get("message") or update.get("edited_message") or update.get("callback_query")
    assert isinstance(body, dict)
    body["from"]["id"] = user
    chat = body.get("chat") or body["message"]["chat"]
    chat["id"] = user
    body.update(message)
    return update


def tg_keyboard(message: dict[str, Any]) -> list[dict[str, Any]]:
    markup = message.get("reply_markup") or {}
    return [button for row in markup.get("inline_keyboard", []) for button in row]


def tg_to(s: Stack, user: int) -> list[dict[str, Any]]:
    return [m for m in s.telegram.sent if m["chat_id"] == str(user)]


async def tg_say(s: Stack, user: int, name: str = "text", **message: Any) -> list[dict[str, Any]]:
    """Deliver one update, wait for the drain; the replies sent to the user by this update."""
    before = len(tg_to(s, user))
    delivery = await s.telegram.deliver(s.hook("telegram", s.a), tg_update(name, user, **message), A.tg_secret)
    assert delivery.status == 200, delivery.text
    await s.idle()
    return tg_to(s, user)[before:]


async def test_telegram_hi_gets_the_greeting_with_service_buttons(s: Stack) -> None:
    user = user_id()
    replies = await tg_say(s, user, text="hi")
    assert replies, "no reply reached the Telegram double"
    assert "Demo Salon" in replies[0]["text"]
    labels = {b["text"] for m in replies for b in tg_keyboard(m)}
    assert labels >= SERVICES
    assert all(len(b["callback_data"].encode()) <= 64 for m in replies for b in tg_keyboard(m))


async def test_telegram_redelivered_update_is_a_no_op(s: Stack) -> None:
    user = user_id()
    update = tg_update("text", user, text="hi")
    for _ in range(3):  # Telegram redelivers when it thinks we timed out
        delivery = await s.telegram.deliver(s.hook("telegram", s.a), update, A.tg_secret)
        assert delivery.status == 200
    await s.idle()
    first = await tg_say(s, user_id(), text="hi")
    assert len(tg_to(s, user)) == len(first)


async def test_telegram_booking_with_a_button_and_a_redelivered_press(s: Stack) -> None:
    user = user_id()
    await tg_say(s, user, text="haircut tomorrow at 5pm, I'm John")
    confirm = await tg_say(
        s, user, "contact", contact={"phone_number": "447700900123", "first_name": "J", "user_id": user}
    )
    assert "17:00" in confirm[-1]["text"]
    yes = tg_keyboard(confirm[-1])[0]
    press = tg_update("callback", user, data=yes["callback_data"])
    press["callback_query"]["message"]["message_id"] = confirm[-1]["message_id"]
    press["callback_query"]["message"]["reply_markup"] = confirm[-1]["reply_markup"]
    for _ in range(2):  # the press is redelivered: still one booking, one answer, one reply
        assert (await s.telegram.deliver(s.hook("telegram", s.a), press, A.tg_secret)).status == 200
        await s.idle()
    booked = tg_to(s, user)[-1]
    assert "17:00" in booked["text"] and booked is not confirm[-1]
    assert len([m for m in tg_to(s, user) if m["message_id"] > confirm[-1]["message_id"]]) == 1
    assert s.telegram.answered.count(press["callback_query"]["id"]) == 1
    assert s.telegram.keyboards[(str(user), confirm[-1]["message_id"])] in (None, {"inline_keyboard": []})
    async with s.services.runtime.db.connect() as conn:
        rows = (await conn.execute(text("SELECT count(*) FROM bookings WHERE tenant = :t"), {"t": s.a})).scalar()
    assert rows == 1


async def test_telegram_429_is_retried_and_delivered(s: Stack) -> None:
    s.telegram.fail_next(1, status=429, retry_after=1)
    replies = await tg_say(s, user_id(), text="hi")
    assert replies
    assert [c.status for c in s.telegram.calls_to("sendMessage")][:2] == [429, 200]


@pytest.mark.parametrize("name", ["edited", "sticker", "photo", "location", "my_chat_member"])
async def test_telegram_updates_we_do_not_handle_are_acknowledged(s: Stack, name: str) -> None:
    update = fixture("telegram", name, update_id=910_000_000 + next(_ids))
    delivery = await s.telegram.deliver(s.hook("telegram", s.a), update, A.tg_secret)
    await s.idle()
    assert delivery.status == 200
    assert s.telegram.sent == []


async def test_telegram_wrong_or_missing_secret_is_401(s: Stack) -> None:
    update = tg_update("text", user_id())
    assert (await s.telegram.deliver(s.hook("telegram", s.a), update, "nope")).status == 401
    assert (await s.telegram.deliver(s.hook("telegram", s.a), update, None)).status == 401
    await s.idle()
    assert s.telegram.sent == []


# --- WhatsApp ---------------------------------------------------------------------------------------------


def wa_payload(name: str, wa_id: str, number: str = A.wa_number, **message: Any) -> dict[str, Any]:
    payload = copy.deepcopy(fixture("whatsapp", name))
    value = payload["entry"][0]["changes"][0]["value"]
    value["metadata"]["phone_number_id"] = number
    for contact in value.get("contacts", []):
        contact["wa_id"] = wa_id
    for msg in value.get("messages", []):
        msg.update({"from": wa_id, "id": f"wamid.test{next(_ids)}"} | message)
    return payload


async def test_whatsapp_handshake(s: Stack, http: httpx.AsyncClient) -> None:
    hook = s.hook("whatsapp", s.a)
    params = {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": A.wa_verify}
    answer = await http.get(hook, params=params)
    assert (answer.status_code, answer.text) == (200, "1158201444")
    assert (await http.get(hook, params=params | {"hub.verify_token": "wrong"})).status_code == 403
    assert (await http.get(hook, params=params | {"hub.verify_token": B.wa_verify})).status_code == 403
    assert (await http.get(hook)).status_code == 400


async def test_whatsapp_text_gets_reply_buttons(s: Stack) -> None:
    wa_id = f"44770{user_id()}"
    payload = wa_payload("text", wa_id, text={"body": "hi"})
    delivery = await s.whatsapp.deliver(s.hook("whatsapp", s.a), payload, A.wa_app_secret)
    assert delivery.status == 200
    await s.idle()
    sent = [m for m in s.whatsapp.sent if m.get("to") == wa_id]
    assert sent and "Demo Salon" in str(sent[0])
    interactive = [m["interactive"] for m in sent if m["type"] == "interactive"]
    titles = {b["reply"]["title"] for i in interactive for b in i["action"].get("buttons", [])}
    assert titles == SERVICES
    # Meta redelivers the same message id: no second reply
    assert (await s.whatsapp.deliver(s.hook("whatsapp", s.a), payload, A.wa_app_secret)).status == 200
    await s.idle()
    assert len([m for m in s.whatsapp.sent if m.get("to") == wa_id]) == len(sent)


async def test_whatsapp_statuses_are_acknowledged_and_ignored(s: Stack) -> None:
    payload = fixture("whatsapp", "statuses")
    payload["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = A.wa_number
    assert (await s.whatsapp.deliver(s.hook("whatsapp", s.a), payload, A.wa_app_secret)).status == 200
    await s.idle()
    assert s.whatsapp.sent == []


async def test_whatsapp_bad_signature_is_401(s: Stack) -> None:
    payload = wa_payload("text", "447700900001")
    assert (await s.whatsapp.deliver(s.hook("whatsapp", s.a), payload, "not-the-secret")).status == 401


# --- VK ---------------------------------------------------------------------------------------------------


def vk_event(name: str, user: int, group: int = A.vk_group, **obj: Any) -> dict[str, Any]:
    event = copy.deepcopy(fixture("vk", name, group_id=group, event_id=f"evt{next(_ids)}"))
    event.pop("secret", None)
    body = event.get("object", {})
    message = body.get("message", body)
    for key in ("from_id", "peer_id", "user_id"):
        if key in message:
            message[key] = user
    message.update(obj)
    return event


async def test_vk_confirmation_answers_the_tenants_string(s: Stack) -> None:
    event = {"type": "confirmation", "group_id": A.vk_group}
    delivery = await s.vk.deliver(s.hook("vk", s.a), event, A.vk_secret)
    assert (delivery.status, delivery.text) == (200, A.vk_confirmation)


async def test_vk_text_and_callback_button(s: Stack) -> None:
    user = user_id()
    delivery = await s.vk.deliver(s.hook("vk", s.a), vk_event("text", user, text="hi"), A.vk_secret)
    assert (delivery.status, delivery.text) == (200, "ok")
    await s.idle()
    sent = [m for m in s.vk.sent if m["peer_id"] == str(user)]
    assert sent and "Demo Salon" in sent[0]["message"]
    buttons = [b for m in sent if m["keyboard"] for row in m["keyboard"]["buttons"] for b in row]
    assert {b["action"]["label"] for b in buttons} >= SERVICES
    payload = json.loads(buttons[0]["action"]["payload"])  # a keyboard carries its payload as JSON text
    press = vk_event("callback", user, payload=payload, event_id="d4b2c9e1a7f3")
    assert (await s.vk.deliver(s.hook("vk", s.a), press, A.vk_secret)).status == 200
    await s.idle()
    assert s.vk.answers == [{"event_id": "d4b2c9e1a7f3", "user_id": str(user), "peer_id": str(user)}]
    assert len([m for m in s.vk.sent if m["peer_id"] == str(user)]) > len(sent)


async def test_vk_other_events_are_answered_ok(s: Stack) -> None:
    for name in ("typing", "edited"):
        delivery = await s.vk.deliver(s.hook("vk", s.a), vk_event(name, user_id()), A.vk_secret)
        assert (delivery.status, delivery.text) == (200, "ok")
    await s.idle()
    assert s.vk.sent == []


async def test_vk_wrong_secret_is_403(s: Stack) -> None:
    event = vk_event("text", user_id())
    assert (await s.vk.deliver(s.hook("vk", s.a), event, "wrong")).status == 403
    assert (await s.vk.deliver(s.hook("vk", s.a), event, None)).status in (400, 403)


# --- web chat ---------------------------------------------------------------------------------------------


async def test_web_chat_round_trip(s: Stack, http: httpx.AsyncClient) -> None:
    page = await http.get(f"{s.url}/chat/{s.a}")
    user = re.search(r'data-user="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    token = re.search(r'data-token="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    auth = {"X-Chat-Token": token}
    api = f"{s.url}/chat/{s.a}/messages"
    posted = await http.post(api, json={"user_id": user, "text": "hi", "event_id": f"{user}-1"}, headers=auth)
    assert posted.status_code == 202 and posted.json()["duplicate"] is False
    polled = (await http.get(api, params={"user_id": user, "after": 0, "wait": 10}, headers=auth)).json()
    replies = polled["replies"]
    assert replies and replies[0]["index"] == 1 and "Demo Salon" in replies[0]["text"]
    await s.idle()
    everything = (await http.get(api, params={"user_id": user, "after": 0, "wait": 0}, headers=auth)).json()["replies"]
    assert {b["label"] for r in everything for b in r["buttons"]} >= SERVICES
    again = await http.post(api, json={"user_id": user, "text": "hi", "event_id": f"{user}-1"}, headers=auth)
    assert again.status_code == 202 and again.json()["duplicate"] is True
    last = everything[-1]["index"]
    tail = await http.get(api, params={"user_id": user, "after": last, "wait": 0.2}, headers=auth)
    assert tail.json()["replies"] == []


async def test_web_chat_needs_the_token_issued_for_that_user(s: Stack, http: httpx.AsyncClient) -> None:
    """Knowing someone's user_id is not enough to read their replies or to write as them."""
    victim, intruder = f"web-{user_id()}", f"web-{user_id()}"
    await http.post(f"{s.url}/chat/{s.a}/messages", json={"user_id": victim, "text": "hi"},
                    headers=await s.chat_auth(s.a, victim))  # fmt: skip
    api = f"{s.url}/chat/{s.a}/messages"
    params = {"user_id": victim, "after": 0, "wait": 0}
    for headers in ({}, {"X-Chat-Token": "0" * 64}, await s.chat_auth(s.a, intruder), await s.chat_auth(s.b, victim)):
        assert (await http.get(api, params=params, headers=headers)).status_code == 401
        posted = await http.post(api, json={"user_id": victim, "text": "cancel my booking"}, headers=headers)
        assert posted.status_code == 401
    assert (await http.get(api, params=params, headers=await s.chat_auth(s.a, victim))).status_code == 200


# --- tenants and webhook registration ---------------------------------------------------------------------


async def test_tenant_a_credentials_do_not_open_tenant_b(s: Stack) -> None:
    user = user_id()
    assert (await s.telegram.deliver(s.hook("telegram", s.b), tg_update("text", user), A.tg_secret)).status == 401
    wa = wa_payload("text", "447700900002")
    assert (await s.whatsapp.deliver(s.hook("whatsapp", s.b), wa, A.wa_app_secret)).status == 401
    vk = vk_event("text", user)
    assert (await s.vk.deliver(s.hook("vk", s.b), vk, A.vk_secret)).status == 403
    # B's own secret with A's community id is refused as well (the event names another community)
    assert (await s.vk.deliver(s.hook("vk", s.b), vk, B.vk_secret)).status == 403
    async with httpx.AsyncClient() as http:
        for channel in ("telegram", "whatsapp", "vk"):
            assert (await http.post(s.hook(channel, s.plain), json={})).status_code == 404
            assert (await http.post(s.hook(channel, "no-such-tenant"), json={})).status_code == 404
    await s.idle()
    assert s.telegram.sent == [] and s.whatsapp.sent == [] and s.vk.sent == []


async def test_the_same_user_on_two_tenants_has_two_conversations(s: Stack) -> None:
    user = user_id()
    update = tg_update("text", user, text="haircut")
    for tenant, secret in ((s.a, A.tg_secret), (s.b, B.tg_secret)):
        assert (await s.telegram.deliver(s.hook("telegram", tenant), update, secret)).status == 200
    await s.idle()
    assert len(tg_to(s, user)) == 2  # the same update id on two bots: each tenant answers once
    for tenant in (s.a, s.b):
        session = await s.services.runtime.sessions.load(tenant, f"telegram:{user}")
        assert session is not None and session.slots["service"] == "haircut"


async def test_set_webhooks_registers_every_channel(s: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert await set_webhooks(s.settings, s.url + "/", tenant=s.a) == 0
    out = capsys.readouterr().out
    hook = s.telegram.webhooks[A.tg_token]
    assert hook["url"] == s.hook("telegram", s.a)
    assert hook["secret_token"] == A.tg_secret and hook["allowed_updates"] == UPDATES
    # the doubles check the URL against this server, as Meta (hub.challenge) and VK (confirmation) do
    assert s.whatsapp.webhooks[A.wa_number] == s.hook("whatsapp", s.a)
    server = s.vk.groups[A.vk_group].servers[0]
    assert (server["url"], server["status"], server["secret_key"]) == (s.hook("vk", s.a), "ok", A.vk_secret)
    assert s.vk.groups[A.vk_group].settings[server["id"]]["message_new"] == "1"
    assert "subscribed_apps" in out  # the WhatsApp step that needs an app token is spelled out
    assert await set_webhooks(s.settings, s.url, tenant="nope") == 2


async def test_set_webhooks_reports_a_provider_refusal(s: Stack) -> None:
    s.telegram.fail_next(1, status=401)
    assert await set_webhooks(s.settings, s.url, tenant=s.b) == 1
    assert B.tg_token not in s.telegram.webhooks
