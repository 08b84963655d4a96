"""The web chat page in a real headless browser (Debian's chromium, driven by playwright): a customer books the
demo salon through the page, against the real server, Redis and PostgreSQL, on the real clock.

The real clock means "tomorrow" may be a Sunday (closed), so the test picks the day and the time from the
buttons the bot offers, which are free on whatever day the test runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from _stack import ROOT, serve_app
from playwright.async_api import BrowserContext, Error, Locator, Page, Request, async_playwright, expect

from bot.booking.base import BookRequest
from bot.config import load_config
from bot.ingest import InProcess
from bot.runtime import Runtime
from bot.web.server import create_app
from bot.worker import Services
from channels.base import InboundMessage

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = "+447700900123"
STAFF_TOKEN = "staff-token-of-the-test-salon"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")


@dataclass
class Chat:
    url: str
    tenant: str
    runtime: Runtime
    services: Services


@pytest.fixture(scope="module")
async def chat(services_env: dict[str, str]) -> AsyncIterator[Chat]:
    """The real server for a fresh copy of the demo tenant; drains in process, real clock."""
    base = load_config(ROOT / "config.yaml", env=services_env)
    tenant = f"web-{uuid4().hex[:10]}"
    demo = base.tenants["demo"].model_copy(update={"staff_token": STAFF_TOKEN})
    settings = base.model_copy(update={"tenants": {tenant: demo}})
    runtime = await Runtime.start(settings)
    services = Services.build(runtime, in_process=True)
    server, task, url = await serve_app(create_app(settings, services=services))
    # The page's long poll (up to 25 s) outlives the closed browser: cut it at shutdown instead of waiting.
    server.config.timeout_graceful_shutdown = 1
    try:
        yield Chat(f"{url}/chat/{tenant}", tenant, runtime, services)
    finally:
        server.should_exit = True
        await task
        await services.aclose()
        await runtime.drop_tenant(tenant)
        await runtime.aclose()


@pytest.fixture(scope="module")
async def browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BrowserContext]:
    async with async_playwright() as pw:
        # A persistent context is the only way to choose the profile dir: a fresh one per run.
        profile = tmp_path_factory.mktemp("chromium-profile")
        context = await pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 390, "height": 760},  # a phone
        )
        try:
            yield context
        finally:
            await context.close()


def last_bot(page: Page) -> Locator:
    return page.locator("#log .msg.bot:not(.typing)").last


async def type_and_send(page: Page, text: str, *, enter: bool = True) -> None:
    await page.get_by_label("Message").fill(text)
    if enter:
        await page.get_by_label("Message").press("Enter")
    else:
        await page.get_by_role("button", name="Send").click()


async def press_first_chip(page: Page, asking: str) -> str:
    """Press the first button of the bot's last message (which must contain ``asking``); its label."""
    await expect(last_bot(page)).to_contain_text(asking)
    replies = page.locator("#log .msg.bot:not(.typing)")
    chips = replies.nth(await replies.count() - 1).locator(".chips button")  # this one, not the next reply
    await expect(chips.last).to_be_in_viewport()  # the newest buttons are scrolled into view
    label = await chips.first.inner_text()
    await chips.first.click()
    for i in range(await chips.count()):  # the keyboard is spent: no second answer to the same question
        await expect(chips.nth(i)).to_be_disabled()
    await expect(page.locator("#log .msg.user").last).to_have_text(label)
    return label


async def test_a_customer_books_through_the_page(chat: Chat, browser: BrowserContext, tmp_path: Path) -> None:
    page = browser.pages[0]
    posts: list[dict[str, str]] = []

    def record(request: Request) -> None:
        if request.method == "POST":
            posts.append(json.loads(request.post_data or "null"))

    page.on("request", record)
    errors: list[Error] = []

    def fail(error: Error) -> None:
        errors.append(error)

    page.on("pageerror", fail)  # playwright wants a Python function here, not a builtin like errors.append
    await page.goto(chat.url)
    await expect(page).to_have_title("Demo Salon")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Demo Salon")

    await type_and_send(page, "I'd like a <b>haircut</b>")
    await expect(page.locator("#log .msg.user").last).to_have_text("I'd like a <b>haircut</b>")  # shown as text
    assert await page.locator("#log b").count() == 0
    day = await press_first_chip(page, "Which day")
    time = await press_first_chip(page, "What time")
    await expect(last_bot(page)).to_contain_text("What name")
    await type_and_send(page, "John", enter=False)
    await expect(last_bot(page)).to_contain_text("phone number")
    await type_and_send(page, PHONE)
    await expect(last_bot(page)).to_contain_text("Shall I book it?")
    await type_and_send(page, "yes")
    await expect(last_bot(page)).to_contain_text(f"Done! You're booked for haircut on {day} at {time}")
    await expect(page.locator("#log .chips button:enabled")).to_have_count(0)  # a typed answer spends Yes/No too
    await page.screenshot(path=tmp_path / "webchat.png", full_page=True)
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "overflows a phone"

    bookings = await chat.runtime.tenants[chat.tenant].calendar.active_bookings()
    assert [
        (b.service, b.name, b.phone, f"{b.start:%a} {b.start.day} {b.start:%b}", f"{b.start:%H:%M}") for b in bookings
    ] == [("haircut", "John", PHONE, day, time)]
    # One post per answer, each with its own event id (the server's dedupe key), all from the browser's user id.
    identity = await page.evaluate(f"JSON.parse(localStorage['bookingbot.identity.{chat.tenant}'])")
    user = identity["user"]
    assert await chat.services.webchat.authorized(chat.tenant, user, identity["token"])  # the server signed it
    assert [bool(post.get("button")) for post in posts] == [False, True, True, False, False, False]
    assert len({post["event_id"] for post in posts}) == len(posts) and {post["user_id"] for post in posts} == {user}
    assert bookings[0].customer.endswith(user)
    # The transcript survives a reload, without repeating a reply.
    await page.reload()
    await expect(last_bot(page)).to_contain_text("Done! You're booked")
    await expect(page.locator("#log .msg.bot", has_text="Done!")).to_have_count(1)
    assert errors == []


async def test_a_long_paste_shows_the_limit(chat: Chat, browser: BrowserContext) -> None:
    page = browser.pages[0]
    await page.goto(chat.url)
    await page.get_by_label("Message").fill("x" * 5000)  # what a paste does: the field keeps maxlength
    await expect(page.locator("#limit")).to_contain_text("4096 / 4096 characters: the limit, the rest was cut")
    await page.get_by_label("Message").fill("short")
    await expect(page.locator("#limit")).to_be_hidden()


async def test_staff_page_shows_bookings_and_conversations(chat: Chat, browser: BrowserContext) -> None:
    tenant = chat.runtime.tenants[chat.tenant]
    now = datetime.now(UTC)
    today = now.astimezone(tenant.profile.tz).date()
    free = await tenant.calendar.free_slots("manicure", today + timedelta(days=1), today + timedelta(days=7), now)
    booking = await tenant.calendar.book(BookRequest(
        key=f"staff-{uuid4().hex}", customer="web:staff-check", service="manicure", start=free[0],
        name="Staff Check", phone=PHONE,
    ))  # fmt: skip
    user = f"staff-{uuid4().hex[:8]}"
    hello = InboundMessage(tenant=chat.tenant, channel="web", user_id=user, event_id=uuid4().hex, text="hi")
    await chat.services.ingest.accept(hello)
    scheduler = chat.services.ingest.scheduler
    assert isinstance(scheduler, InProcess)
    await asyncio.wait_for(scheduler.idle(), 60)

    page = browser.pages[0]
    base = chat.url.replace("/chat/", "/staff/")
    refused = await page.goto(f"{base}?token=wrong-token-0000000")
    assert refused is not None and refused.status == 401
    shown = await page.goto(f"{base}?token={STAFF_TOKEN}")
    assert shown is not None and shown.status == 200
    await expect(page.get_by_role("heading", level=1)).to_have_text("Demo Salon")
    start = booking.start.astimezone(tenant.profile.tz)
    row = page.locator("#upcoming tr", has_text="Staff Check")
    await expect(row).to_contain_text(f"{start:%a %d %b %H:%M}")
    await expect(row).to_contain_text("manicure")
    talk = page.locator("#conversations tr", has_text=f"web:{user}")
    await expect(talk.locator(".state")).not_to_have_text("ended")  # the live session's state
    session = await chat.runtime.sessions.load(chat.tenant, f"web:{user}")
    assert session is not None and await talk.locator(".state").inner_text() == session.state
    icon = await page.goto(chat.url.replace(f"/chat/{chat.tenant}", "/favicon.ico"))
    assert icon is not None and icon.status == 200 and icon.headers["content-type"].startswith("image/svg+xml")
