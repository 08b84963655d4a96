"""Handoffs reach a person: a staff webhook (a real HTTP server on loopback) gets the notice, failures are
retried and then reported (``notified: false``), and ``resume`` gives the conversation back to the bot."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp import web
from redis.asyncio import Redis

from bot import handoff
from bot.handoff import HandoffDesk
from bot.sessions import SessionStore
from dialogs.loader import builtin_template
from dialogs.session import Session

SINCE = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


class StaffHook:
    """The tenant's staff endpoint: records each POSTed JSON body; answers ``statuses`` in turn, then 200."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []
        self.statuses: list[int] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(json.loads(await request.read()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


@pytest.fixture
async def hook() -> AsyncIterator[tuple[StaffHook, str]]:
    staff = StaffHook()
    app = web.Application()
    app.router.add_post("/handoff", staff.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield staff, f"http://127.0.0.1:{port}/handoff"
    await runner.cleanup()


async def _handed_off(sessions: SessionStore, tenant: str) -> Session:
    session = Session(tenant=tenant, conversation="telegram:42", customer="c42", state="handoff",
                      handoff_at=SINCE.isoformat())  # fmt: skip
    await sessions.save(session)
    return session


async def test_staff_are_notified_and_resume_gives_the_conversation_back(
    redis: Redis, tenant: str, hook: tuple[StaffHook, str]
) -> None:
    staff, url = hook
    sessions = SessionStore(redis, ttl_seconds=60)
    desk = HandoffDesk(redis, sessions, url)
    session = await _handed_off(sessions, tenant)
    await desk.open(tenant, session, "requested", SINCE)
    assert staff.bodies == [{"tenant": tenant, "conversation": "telegram:42", "customer": "c42",
                             "reason": "requested", "since": "2026-11-23T09:00:00Z"}]  # fmt: skip
    [listed] = await desk.open_handoffs(tenant)
    assert (listed.conversation, listed.notified) == ("telegram:42", True)

    assert await desk.resume(tenant, "telegram:42", builtin_template("booking"))
    after = await sessions.load(tenant, "telegram:42")
    assert after is not None and (after.state, after.handoff_at) == ("idle", None)
    assert await desk.open_handoffs(tenant) == []
    assert not await desk.resume(tenant, "telegram:42", builtin_template("booking"))


async def test_a_failing_webhook_is_retried_then_reported(
    redis: Redis, tenant: str, hook: tuple[StaffHook, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handoff, "BACKOFF_SECONDS", 0.01)
    staff, url = hook
    staff.statuses = [500, 503]  # the third attempt succeeds
    sessions = SessionStore(redis, ttl_seconds=60)
    desk = HandoffDesk(redis, sessions, url)
    session = await _handed_off(sessions, tenant)
    await desk.open(tenant, session, "attempts:phone", SINCE)
    assert len(staff.bodies) == 3
    assert [n.notified for n in await desk.open_handoffs(tenant)] == [True]

    staff.statuses = [500, 500, 500]
    await desk.open(tenant, session, "requested", SINCE)
    assert [n.notified for n in await desk.open_handoffs(tenant)] == [False]  # kept, and shown as not told


async def test_a_conversation_the_bot_took_back_is_no_longer_listed(redis: Redis, tenant: str) -> None:
    sessions = SessionStore(redis, ttl_seconds=60)
    desk = HandoffDesk(redis, sessions, None)
    session = await _handed_off(sessions, tenant)
    await desk.open(tenant, session, "requested", SINCE)
    assert len(await desk.open_handoffs(tenant)) == 1
    session.state, session.handoff_at = "idle", None  # the quiet period passed and the customer wrote again
    await sessions.save(session)
    assert await desk.open_handoffs(tenant) == []
