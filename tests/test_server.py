"""The HTTP surface: every endpoint answers bad input with a 4xx (never a 500), body limits, health and
readiness (also with Redis and the database down), metrics, and the web chat API's checks and long poll."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from _stack import A, Stack, stack
from redis.asyncio import Redis

from bot import db
from bot.runtime import Runtime
from bot.web.server import MAX_BODY, create_app
from bot.worker import Services
from channels.base import OutboundMessage, OutButton
from tests.doubles.whatsapp import signature


@pytest.fixture(scope="module")
async def s(services_env: dict[str, str]) -> AsyncIterator[Stack]:
    async with stack(services_env) as st:
        yield st


@pytest.fixture
async def http(s: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
        yield client


GARBAGE = [
    b"",
    b"garbage",
    b"{",
    b"[]",
    b"null",
    b"42",
    b'"text"',
    b'{"update_id": "x", "message": 5}',
    b'{"object": "whatsapp_business_account", "entry": 7}',
    b'{"type": "message_new", "object": {"message": "x"}, "group_id": "y"}',
    b'{"user_id": "../../etc", "text": 5}',
    b'{"type": "message_new", "group_id": 218412345, "secret": "not-it", "object": {}}',
    b"\xff\xfe\x00garbage",
    b"[" * 5000 + b"]" * 5000,
    json.dumps({"a": "x" * 10000}).encode(),
]


def auth_headers(channel: str, body: bytes) -> list[dict[str, str]]:
    """No credentials, wrong ones, and the right ones (so that the parser itself sees the garbage)."""
    headers: list[dict[str, str]] = [{}, {"X-Telegram-Bot-Api-Secret-Token": "x", "X-Hub-Signature-256": "x"}]
    if channel == "telegram":
        headers.append({"X-Telegram-Bot-Api-Secret-Token": A.tg_secret})
    if channel == "whatsapp":
        headers.append({"X-Hub-Signature-256": signature(body, A.wa_app_secret)})
    return headers


async def test_garbage_never_gives_a_server_error(s: Stack, http: httpx.AsyncClient) -> None:
    statuses: set[int] = set()
    for channel in ("telegram", "whatsapp", "vk"):
        for body in GARBAGE:
            for headers in auth_headers(channel, body):
                answer = await http.post(f"/webhooks/{channel}/{s.a}", content=body, headers=headers)
                assert answer.status_code < 500, (channel, body[:40], headers, answer.text)
                statuses.add(answer.status_code)
    for body in GARBAGE:
        answer = await http.post(f"/chat/{s.a}/messages", content=body)
        assert answer.status_code == 400, (body[:40], answer.text)
    assert statuses <= {200, 400, 401, 403}
    assert {400, 401, 403} <= statuses
    await s.idle()


async def test_bad_query_strings_are_400(s: Stack, http: httpx.AsyncClient) -> None:
    api = f"/chat/{s.a}/messages"
    for params in (
        {},
        {"user_id": ""},
        {"user_id": "a/b"},
        {"user_id": "x" * 65},
        {"user_id": "u", "after": "x"},
        {"user_id": "u", "after": "-1"},
        {"user_id": "u", "wait": "soon"},
        {"user_id": "u", "wait": "99"},
        {"user_id": "u", "wait": "nan"},
    ):
        answer = await http.get(api, params=params)
        assert answer.status_code == 400, (params, answer.text)
    whatsapp = f"/webhooks/whatsapp/{s.a}"
    assert (await http.get(whatsapp, params={"hub.mode": "unsubscribe"})).status_code == 400
    assert (await http.get(whatsapp, params={"hub.challenge": "1"})).status_code == 400


async def test_unknown_tenant_or_channel_is_404(s: Stack, http: httpx.AsyncClient) -> None:
    for path in (
        "/webhooks/telegram/nope",
        "/webhooks/whatsapp/nope",
        "/webhooks/vk/nope",
        "/chat/nope/messages",
        f"/webhooks/telegram/{s.plain}",
        f"/webhooks/vk/{s.plain}",
        "/webhooks/signal/x",
    ):
        assert (await http.post(path, content=b"{}")).status_code == 404, path
    for path in ("/chat/nope", "/chat/nope/messages?user_id=u", f"/webhooks/whatsapp/{s.plain}?hub.mode=subscribe"):
        assert (await http.get(path)).status_code == 404, path


async def test_body_over_1_mb_is_413(s: Stack, http: httpx.AsyncClient) -> None:
    big = b"x" * (MAX_BODY + 1)
    for path in (
        f"/webhooks/telegram/{s.a}",
        f"/webhooks/whatsapp/{s.a}",
        f"/webhooks/vk/{s.a}",
        f"/chat/{s.a}/messages",
    ):
        assert (await http.post(path, content=big)).status_code == 413, path

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the streamed size counts
            for _ in range(MAX_BODY // 65536 + 2):
                yield b"y" * 65536

        assert (await http.post(path, content=chunks())).status_code == 413, path
    exactly = json.dumps({"update_id": 1, "pad": "p" * (MAX_BODY - 40)}).encode()[:MAX_BODY]
    answer = await http.post(
        f"/webhooks/telegram/{s.a}", content=exactly, headers={"X-Telegram-Bot-Api-Secret-Token": A.tg_secret}
    )
    assert answer.status_code in (200, 400)  # at the limit: read and judged on its content


async def test_health_ready_and_metrics(s: Stack, http: httpx.AsyncClient) -> None:
    assert (await http.get("/health")).json() == {"status": "ok"}
    ready = await http.get("/health/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ok", "redis": "ok", "database": "ok"}
    await http.post(f"/webhooks/telegram/{s.a}", content=b"{}")
    metrics = await http.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'bookingbot_webhooks_total{channel="telegram",status="401"}' in metrics.text
    assert "bookingbot_webhook_ack_seconds_bucket" in metrics.text
    assert 'bookingbot_crm_outbox_rows{status="pending"}' in metrics.text  # read from SQL at each scrape
    assert 'bookingbot_crm_outbox_oldest_age_seconds{status="failed"}' in metrics.text


async def test_redis_and_database_down_give_503_not_500(s: Stack) -> None:
    """Readiness reports each dependency; a webhook that cannot be stored is refused with 503, so the
    provider redelivers it later."""
    live = s.services.runtime
    dead_redis = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, decode_responses=True)
    dead_db = db.make_engine("postgresql://postgres@127.0.0.1:1/test")
    runtime = Runtime(s.settings, dead_redis, dead_db, live.log)
    app = create_app(s.settings, services=Services.build(runtime, in_process=True))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://bot") as http:
            ready = await http.get("/health/ready")
            assert ready.status_code == 503
            assert ready.json()["redis"].startswith("down") and ready.json()["database"].startswith("down")
            assert (await http.get("/health")).status_code == 200
            update = {
                "update_id": 1,
                "message": {
                    "message_id": 1,
                    "date": 0,
                    "chat": {"id": 1, "type": "private"},
                    "from": {"id": 1, "is_bot": False, "first_name": "A"},
                    "text": "hi",
                },
            }
            answer = await http.post(
                f"/webhooks/telegram/{s.a}", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": A.tg_secret}
            )
            assert answer.status_code == 503
            post = {"user_id": "u1", "text": "hi"}
            answer = await http.post(f"/chat/{s.a}/messages", json=post, headers={"X-Chat-Token": "t"})
            assert answer.status_code == 503  # checking the token needs Redis too
    finally:
        await dead_redis.aclose()
        await dead_db.dispose()


async def test_chat_page(s: Stack, http: httpx.AsyncClient) -> None:
    page = await http.get(f"/chat/{s.a}")
    assert page.status_code == 200 and "Demo Salon" in page.text
    assert page.headers["content-type"].startswith("text/html")


async def test_long_poll_wakes_up_when_a_reply_arrives(s: Stack, http: httpx.AsyncClient) -> None:
    user = f"poller-{time.monotonic_ns()}"
    reply = OutboundMessage(
        tenant=s.a,
        channel="web",
        user_id=user,
        text="Pick a time",
        buttons=(OutButton(label="17:00", data="time:17:00"),),
        event_id="e1",
    )

    async def later() -> None:
        await asyncio.sleep(0.3)
        await s.services.webchat.send(reply)

    started = time.monotonic()
    sender = asyncio.create_task(later())
    auth = await s.chat_auth(s.a, user)
    answer = await http.get(f"/chat/{s.a}/messages", params={"user_id": user, "after": 0, "wait": 10}, headers=auth)
    await sender
    assert time.monotonic() - started < 3
    assert answer.json() == {
        "replies": [{"index": 1, "text": "Pick a time", "buttons": [{"label": "17:00", "data": "time:17:00"}]}],
        "last": 1,
    }
    empty = await http.get(f"/chat/{s.a}/messages", params={"user_id": user, "after": 1, "wait": 0}, headers=auth)
    assert empty.json() == {"replies": [], "last": 1}
    params = {"user_id": user, "after": 0, "wait": 0}
    other_tenant = await http.get(f"/chat/{s.b}/messages", params=params, headers=await s.chat_auth(s.b, user))
    assert other_tenant.json()["replies"] == []  # the same user id at another tenant is another outbox
