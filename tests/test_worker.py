"""The worker side on the real Redis: arq's job format written by the ingest script (consumed by a real arq
Worker), the one-drain-job protocol under concurrency, and the sender (rate limits, retries, unreachable
users, no reply sent twice) against the Telegram double."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from _stack import NOW, Stack, stack
from arq.connections import RedisSettings
from arq.worker import Worker, func
from conftest import REDIS_URL
from redis.asyncio import Redis

from bot import keys
from bot.booking.base import Booking
from bot.exceptions import DeliveryFailed
from bot.inbox import Inbox
from bot.ingest import DRAIN_JOB, Accepted, ArqQueue, Ingest, InProcess, Markers, Release, dumps_job, loads_job
from bot.ops.deadletters import dead_letters, retry
from bot.reminders import Reminders
from bot.retry import Backoff
from bot.sender import Limit, RateLimiter, Sender, limits_for
from bot.worker import Drainer, make_worker
from channels.base import InboundMessage, OutboundMessage, OutButton
from channels.settings import TelegramSettings
from channels.telegram import TelegramChannel
from tests.doubles.telegram import TelegramDouble

TOKEN = "123456:test-token"


@pytest.fixture
async def queue(redis: Redis) -> AsyncIterator[str]:
    """A private arq queue (other tests' workers never see its jobs); its job keys are removed afterwards."""
    name = f"test-queue-{uuid4().hex[:12]}"
    yield name
    job_ids = await redis.zrange(name, 0, -1)
    if job_ids:
        await redis.delete(*(keys.job(j) for j in job_ids))
    await redis.delete(name)


def inbound(tenant: str, n: int, user: str = "42", channel: str = "telegram") -> InboundMessage:
    return InboundMessage(tenant=tenant, channel=channel, user_id=user, event_id=f"ev-{user}-{n}", text=f"m{n}")


# --- the ingest script and arq ----------------------------------------------------------------------------


async def test_accept_dedupes_and_schedules_one_job_per_conversation(redis: Redis, tenant: str, queue: str) -> None:
    ingest = Ingest(redis, ArqQueue(queue))
    assert await ingest.accept(inbound(tenant, 1)) is Accepted.SCHEDULED
    assert await ingest.accept(inbound(tenant, 1)) is Accepted.DUPLICATE
    assert await ingest.accept(inbound(tenant, 2)) is Accepted.QUEUED
    assert await ingest.accept(inbound(tenant, 3, user="43")) is Accepted.SCHEDULED

    assert await redis.zcard(queue) == 2
    inbox = await redis.lrange(keys.inbox(tenant, "telegram:42"), 0, -1)  # type: ignore[misc]
    assert [json.loads(item)["event_id"] for item in inbox] == ["ev-42-1", "ev-42-2"]
    job_id = await redis.get(keys.scheduled(tenant, "telegram:42"))
    raw = await redis.get(keys.job(job_id))
    job = json.loads(raw)  # JSON, never pickle
    assert (job["f"], job["a"], job["k"], job["t"]) == (DRAIN_JOB, [tenant, "telegram:42"], {}, None)
    assert await redis.zscore(queue, job_id) == job["et"]
    assert 0 < await redis.pttl(keys.job(job_id)) <= 86_400_000


async def test_a_real_arq_worker_runs_the_scripted_jobs(redis: Redis, tenant: str, queue: str) -> None:
    ingest = Ingest(redis, ArqQueue(queue))
    for n in range(3):
        await ingest.accept(inbound(tenant, n, user=str(n)))
    seen: list[tuple[str, str, str]] = []

    async def drain(ctx: dict[str, Any], tenant_id: str, conversation: str) -> None:
        seen.append((tenant_id, conversation, ctx["job_id"]))

    worker = Worker(
        functions=[func(drain, name=DRAIN_JOB)],
        redis_settings=RedisSettings.from_dsn(REDIS_URL),
        queue_name=queue,
        burst=True,
        poll_delay=0.01,
        handle_signals=False,
        keep_result=0,
        job_serializer=dumps_job,
        job_deserializer=loads_job,
    )
    try:
        await worker.async_run()
    finally:
        await worker.close()
    assert worker.jobs_complete == 3 and worker.jobs_failed == 0
    assert sorted(c for _, c, _ in seen) == ["telegram:0", "telegram:1", "telegram:2"]
    for _, conversation, job_id in seen:
        assert await redis.get(keys.scheduled(tenant, conversation)) == job_id


async def test_release_keeps_the_marker_while_items_wait(redis: Redis, tenant: str, queue: str) -> None:
    ingest, markers = Ingest(redis, ArqQueue(queue)), Markers(redis)
    await ingest.accept(inbound(tenant, 1))
    job_id = await redis.get(keys.scheduled(tenant, "telegram:42"))
    assert await markers.release(tenant, "telegram:42", "someone-else") is Release.OTHER_OWNER
    assert await markers.release(tenant, "telegram:42", job_id) is Release.MORE
    await redis.delete(keys.inbox(tenant, "telegram:42"))
    assert await markers.release(tenant, "telegram:42", job_id) is Release.DONE
    assert await redis.get(keys.scheduled(tenant, "telegram:42")) is None
    # the marker is free: the next message schedules a new job
    assert await ingest.accept(inbound(tenant, 2)) is Accepted.SCHEDULED
    assert await redis.zcard(queue) == 2


async def test_release_adopts_an_expired_marker(redis: Redis, tenant: str, queue: str) -> None:
    ingest, markers = Ingest(redis, ArqQueue(queue)), Markers(redis)
    await ingest.accept(inbound(tenant, 1))
    await redis.delete(keys.scheduled(tenant, "telegram:42"))  # as if it had expired
    assert await markers.release(tenant, "telegram:42", "late-job") is Release.MORE
    assert await redis.get(keys.scheduled(tenant, "telegram:42")) == "late-job"


async def test_one_drain_at_a_time_and_no_message_stranded(redis: Redis, tenant: str) -> None:
    """Pushes race with drains finishing: every message is handled exactly once, in order per conversation,
    never two drains of one conversation at once, and no conversation is left with a marker or items."""
    inbox, markers = Inbox(redis), Markers(redis)
    handled: dict[str, list[int]] = {}
    running: set[str] = set()
    overlaps: list[str] = []
    drains: list[str] = []

    async def run(tenant_id: str, conversation: str, job_id: str) -> None:
        drains.append(conversation)
        if conversation in running:
            overlaps.append(conversation)
        running.add(conversation)
        try:
            while True:
                await inbox.drain(tenant_id, conversation, handler(conversation), "test")
                await asyncio.sleep(0.002)  # widen the window between "inbox empty" and the release
                if await markers.release(tenant_id, conversation, job_id) is not Release.MORE:
                    return
        finally:
            running.discard(conversation)

    def handler(conversation: str) -> Any:
        async def handle(item: str) -> None:
            handled.setdefault(conversation, []).append(int(json.loads(item)["text"][1:]))
            await asyncio.sleep(0)

        return handle

    scheduler = InProcess(run)
    ingest = Ingest(redis, scheduler)
    per_conversation = 40

    async def producer(user: str) -> None:
        for n in range(per_conversation):
            await ingest.accept(inbound(tenant, n, user=user))
            await asyncio.sleep(random.uniform(0, 0.004))  # drains often run dry and release meanwhile

    users = [str(u) for u in range(8)]
    await asyncio.gather(*(producer(u) for u in users))
    await asyncio.wait_for(scheduler.idle(), 10)
    assert overlaps == []
    assert handled == {f"telegram:{u}": list(range(per_conversation)) for u in users}
    for u in users:
        assert await redis.get(keys.scheduled(tenant, f"telegram:{u}")) is None
        assert await redis.llen(keys.inbox(tenant, f"telegram:{u}")) == 0  # type: ignore[misc]
    assert await redis.scard(keys.ready(tenant)) == 0  # type: ignore[misc]
    assert len(drains) >= len(users)


async def nothing(tenant_id: str, conversation: str, job_id: str) -> None:
    """A drain that does nothing (as if the process stopped before it ran)."""


async def test_in_process_recovery_restarts_left_over_drains(redis: Redis, tenant: str) -> None:
    started: list[tuple[str, str]] = []
    await Ingest(redis, InProcess(nothing)).accept(inbound(tenant, 1))  # "the process stops" right after
    marker = await redis.get(keys.scheduled(tenant, "telegram:42"))

    async def record(tenant_id: str, conversation: str, job_id: str) -> None:
        started.append((conversation, job_id))

    recovering = InProcess(record)
    assert await recovering.recover(redis, [tenant]) == 1
    await recovering.idle()
    assert started == [("telegram:42", marker)]


# --- the sender ---------------------------------------------------------------------------------------------


@pytest.fixture
async def telegram() -> AsyncIterator[TelegramDouble]:
    async with TelegramDouble(TOKEN) as double:
        yield double


@pytest.fixture
async def channel(telegram: TelegramDouble) -> AsyncIterator[TelegramChannel]:
    adapter = TelegramChannel(TelegramSettings(token=TOKEN, webhook_secret="s", api_base=telegram.url))
    yield adapter
    await adapter.aclose()


class Sleeps:
    """The sender's clock: records the waits instead of spending them."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def reply(tenant: str, index: int, text: str = "hello", user: str = "42", event: str = "ev-1") -> OutboundMessage:
    buttons = (OutButton(label="Haircut", data="svc:haircut"),) if index == 0 else ()
    return OutboundMessage(
        tenant=tenant,
        channel="telegram",
        user_id=user,
        chat_id=user,
        text=text,
        buttons=buttons,
        event_id=event,
        index=index,
    )


async def test_rate_limit_lets_a_small_burst_through_then_spaces_sends(redis: Redis, tenant: str) -> None:
    limiter = RateLimiter(redis)
    scopes = limits_for("telegram", "42")
    waits = [await limiter.try_take(tenant, "telegram", scopes) for _ in range(5)]
    assert waits[:3] == [0, 0, 0]  # a three-message reply goes out at once
    assert 0.9 <= waits[3] <= 1.0 and 0.9 <= waits[4] <= 1.0  # then about one per second in that chat
    other_chat = await limiter.try_take(tenant, "telegram", limits_for("telegram", "43"))
    assert other_chat == 0  # a chat waiting does not hold up the bot-wide scope


async def test_bot_wide_limit_spaces_sends_across_chats(redis: Redis, tenant: str) -> None:
    limiter = RateLimiter(redis)
    started = time.monotonic()
    for chat in range(40):
        await limiter.take(tenant, "telegram", limits_for("telegram", str(chat)))
    assert 0.9 <= time.monotonic() - started <= 1.3  # 10 at once, then 30/s


async def test_deliver_sends_in_order_once(
    redis: Redis, tenant: str, telegram: TelegramDouble, channel: TelegramChannel
) -> None:
    sleeps = Sleeps()
    sender = Sender(redis, lambda t, c: channel, sleep=sleeps)
    replies = [reply(tenant, 0, "first"), reply(tenant, 1, "second")]
    await sender.deliver(replies)
    await sender.deliver(replies)  # a retried job: nothing is sent twice
    assert [m["text"] for m in telegram.sent] == ["first", "second"]
    keyboard = telegram.sent[0]["reply_markup"]["inline_keyboard"]
    assert keyboard == [[{"text": "Haircut", "callback_data": "svc:haircut"}]]


async def test_429_is_retried_after_retry_after(
    redis: Redis, tenant: str, telegram: TelegramDouble, channel: TelegramChannel
) -> None:
    sleeps = Sleeps()
    sender = Sender(redis, lambda t, c: channel, sleep=sleeps)
    telegram.fail_next(2, status=429, retry_after=3)
    await sender.deliver([reply(tenant, 0)])
    assert [m["text"] for m in telegram.sent] == ["hello"]
    assert sleeps.waits == [3.0, 3.0]
    assert [c.status for c in telegram.calls_to("sendMessage")] == [429, 429, 200]


async def test_5xx_backs_off_then_gives_up_loudly(
    redis: Redis, tenant: str, telegram: TelegramDouble, channel: TelegramChannel
) -> None:
    sleeps = Sleeps()
    sender = Sender(redis, lambda t, c: channel, attempts=3, retry=Backoff(base=0.5, cap=30, floor=0.25), sleep=sleeps)
    telegram.fail_next(3, status=502)
    with pytest.raises(DeliveryFailed):
        await sender.deliver([reply(tenant, 0), reply(tenant, 1)])
    assert len(sleeps.waits) == 2 and 0.25 <= sleeps.waits[0] <= 0.5 and 0.25 <= sleeps.waits[1] <= 1.0
    assert telegram.sent == []  # the second reply waits for the first: order holds on the retry
    await redis.delete(keys.rate(tenant, "telegram", "chat:42"))  # (the chat's 1/s is not under test here)
    await sender.deliver([reply(tenant, 0), reply(tenant, 1)])
    assert len(telegram.sent) == 2


async def test_blocked_user_is_marked_unreachable_and_left_alone(
    redis: Redis, tenant: str, telegram: TelegramDouble, channel: TelegramChannel
) -> None:
    sender = Sender(redis, lambda t, c: channel, sleep=Sleeps())
    telegram.block(42)
    await sender.deliver([reply(tenant, 0), reply(tenant, 1)])
    assert len(telegram.calls_to("sendMessage")) == 1
    assert await redis.exists(keys.unreachable(tenant, "telegram:42"))
    await sender.deliver([reply(tenant, 0, event="ev-2")])
    assert len(telegram.calls_to("sendMessage")) == 1  # not even tried
    # writing again clears the mark (the ingest script does it with the new message)
    await Ingest(redis, InProcess(nothing)).accept(inbound(tenant, 9))
    assert not await redis.exists(keys.unreachable(tenant, "telegram:42"))


async def test_refused_message_is_not_retried(
    redis: Redis, tenant: str, telegram: TelegramDouble, channel: TelegramChannel
) -> None:
    sleeps = Sleeps()
    sender = Sender(redis, lambda t, c: channel, sleep=sleeps)
    await sender.deliver([reply(tenant, 0, text=" "), reply(tenant, 1, text="next")])  # empty text: 400
    assert [c.status for c in telegram.calls_to("sendMessage")] == [400, 200]
    assert sleeps.waits == []


async def test_rate_limit_waits_rather_than_drops(
    redis: Redis, tenant: str, telegram: TelegramDouble, channel: TelegramChannel
) -> None:
    sender = Sender(redis, lambda t, c: channel)
    started = time.monotonic()
    await sender.deliver([reply(tenant, n, text=f"part {n}") for n in range(4)])
    assert len(telegram.sent) == 4
    assert time.monotonic() - started >= 0.9  # the fourth message waited for the chat's 1/s


# --- the drain, with the real pipeline (tenants and doubles of tests/_stack.py) ------------------------------


@pytest.fixture(scope="module")
async def s(services_env: dict[str, str]) -> AsyncIterator[Stack]:
    async with stack(services_env) as st:
        yield st


def hi(s: Stack, user: int, n: int = 0, text: str = "hi") -> InboundMessage:
    return InboundMessage(
        tenant=s.a, channel="telegram", user_id=str(user), chat_id=str(user), event_id=f"{user}-{n}", text=text
    )


def drainer(s: Stack, **options: Any) -> Drainer:
    runtime = s.services.runtime
    sender = Sender(runtime.redis, s.services.channels.outlet, attempts=1, sleep=Sleeps())
    return Drainer(runtime, sender, Markers(runtime.redis), clock=lambda: NOW, **options)


async def queued(s: Stack, *messages: InboundMessage, queue: str) -> str:
    """Accept the messages as the server does (arq mode); the drain job's id."""
    ingest = Ingest(s.services.runtime.redis, ArqQueue(queue))
    for msg in messages:
        await ingest.accept(msg)
    job_id = await s.services.runtime.redis.get(keys.scheduled(s.a, messages[0].conversation))
    assert isinstance(job_id, str)
    return job_id


def sent_to(s: Stack, user: int) -> list[str]:
    return [m["text"] for m in s.telegram.sent if m["chat_id"] == str(user)]


async def test_real_arq_worker_processes_queued_drain_jobs(s: Stack, queue: str) -> None:
    users = [600_000_000 + n for n in range(3)]
    for user in users:
        await queued(s, hi(s, user, 0), hi(s, user, 1, "haircut"), queue=queue)
    worker = make_worker(s.settings, queue_name=queue, burst=True, handle_signals=False, poll_delay=0.01)
    try:
        await asyncio.wait_for(worker.async_run(), 30)
    finally:
        await worker.close()
    assert worker.jobs_complete == 3 and worker.jobs_failed == 0
    redis = s.services.runtime.redis
    for user in users:
        texts = sent_to(s, user)
        assert "Demo Salon" in texts[0] and len(texts) >= 2  # the greeting, then the haircut turn, in order
        assert await redis.get(keys.scheduled(s.a, f"telegram:{user}")) is None
        assert await redis.llen(keys.inbox(s.a, f"telegram:{user}")) == 0  # type: ignore[misc]
    assert await redis.zcard(queue) == 0


async def test_a_reminder_of_a_tenant_no_longer_configured_is_dropped(s: Stack, queue: str) -> None:
    """A tenant removed from the config leaves its reminder jobs queued: they end quietly, not as failures."""
    reminders = Reminders(s.services.runtime.redis)
    reminders.use_arq(queue)
    now, gone = datetime.now(UTC), f"gone~{uuid4().hex[:8]}"
    booking = Booking(id="b1", tenant=gone, key="k", customer="telegram:1", service="haircut",
                      start=now + timedelta(minutes=30), minutes=60, name="John", phone="+447700900123")  # fmt: skip
    assert len(await reminders.schedule(booking, [60], now - timedelta(hours=1))) == 1  # due half an hour ago
    worker = make_worker(s.settings, queue_name=queue, burst=True, handle_signals=False, poll_delay=0.01)
    try:
        await asyncio.wait_for(worker.async_run(), 30)
    finally:
        await worker.close()
    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (1, 0, 0)
    assert await reminders.scheduled(gone) == []


async def test_failed_send_is_retried_without_rerunning_the_dialog(s: Stack, queue: str) -> None:
    user, d = 600_000_100, drainer(s)
    job = await queued(s, hi(s, user), queue=queue)
    s.telegram.fail_next(1, status=502)
    delay = await d.run(s.a, f"telegram:{user}", job)
    assert delay is not None and delay > 0  # the job is retried later
    session = await s.services.runtime.sessions.load(s.a, f"telegram:{user}")
    assert session is not None and session.last_event == f"{user}-0"
    assert await s.services.runtime.inbox.pending(s.a, f"telegram:{user}") == 1  # still at the head
    assert await d.run(s.a, f"telegram:{user}", job) is None
    texts = sent_to(s, user)
    assert len(texts) >= 1 and "Demo Salon" in texts[0]
    again = await s.services.runtime.sessions.load(s.a, f"telegram:{user}")
    assert again is not None and again.version == session.version  # the redriven turn did not run again
    assert not await s.services.runtime.redis.exists(keys.replies(s.a, f"telegram:{user}", f"{user}-0"))


async def test_poison_message_is_dead_lettered_after_failing_for_long_enough(s: Stack, queue: str) -> None:
    user, d = 600_000_200, drainer(s, dead_letter_after=1.0)
    job = await queued(s, hi(s, user, 0), hi(s, user, 1, "haircut"), queue=queue)
    s.telegram.fail_next(3, status=502)  # the first message keeps failing
    first_failure = time.monotonic()
    delay = await d.run(s.a, f"telegram:{user}", job)
    assert delay is not None and delay >= 1.0  # retried, never sooner than the floor
    assert await d.run(s.a, f"telegram:{user}", job) is not None  # still within dead_letter_after: retried
    await asyncio.sleep(max(0.0, first_failure + 1.1 - time.monotonic()))
    assert await d.run(s.a, f"telegram:{user}", job) is None  # failing for over 1 s: dead-lettered, then on
    dead = await s.services.runtime.redis.lrange(keys.deadletter(s.a), 0, -1)  # type: ignore[misc]
    assert [json.loads(json.loads(e)["item"])["event_id"] for e in dead] == [f"{user}-0"]
    assert "DeliveryFailed" in json.loads(dead[0])["error"]
    answered = sent_to(s, user)
    assert len(answered) >= 1 and not any("Demo Salon" in text for text in answered)  # only the second message
    assert await s.services.runtime.redis.get(keys.scheduled(s.a, f"telegram:{user}")) is None
    # The operator's `bookingbot deadletters retry`: the turn was done, so its stored replies go out now.
    [letter] = await dead_letters(s.services.runtime.redis, s.a)
    assert f"telegram:{user} event {user}-0" in letter.line()
    assert await retry(s.services, letter) == "re-sent"
    assert any("Demo Salon" in text for text in sent_to(s, user)[len(answered) :])
    assert await dead_letters(s.services.runtime.redis, s.a) == []


async def test_unreadable_or_foreign_items_are_dead_lettered_at_once(s: Stack) -> None:
    user, d = 600_000_300, drainer(s)
    conversation = f"telegram:{user}"
    redis = s.services.runtime.redis
    foreign = hi(s, user).model_copy(update={"tenant": "gone-tenant"})
    await redis.rpush(keys.inbox(s.a, conversation), "not json", foreign.model_dump_json())  # type: ignore[misc]
    await redis.set(keys.scheduled(s.a, conversation), "job-x")
    assert await d.run(s.a, conversation, "job-x") is None
    assert await redis.llen(keys.deadletter(s.a)) == 2  # type: ignore[misc]
    await redis.delete(keys.deadletter(s.a))


async def test_a_long_backlog_yields_between_runs(s: Stack, queue: str) -> None:
    user, d = 600_000_400, drainer(s, budget_s=0)
    job = await queued(s, *(hi(s, user, n, f"hello {n}") for n in range(3)), queue=queue)
    conversation = f"telegram:{user}"
    pending = []
    while (delay := await d.run(s.a, conversation, job)) is not None:
        assert delay == 0  # a yield, not a failure: run again at once
        pending.append(await s.services.runtime.inbox.pending(s.a, conversation))
    assert pending == [2, 1]  # one message per run
    assert len(sent_to(s, user)) >= 3


async def test_waiters_on_the_account_limit_do_not_stampede(redis: Redis, tenant: str) -> None:
    """30 chats of one bot wait for a 60/s account limit: they queue in-process, so Redis is asked about once
    per send instead of every waiter asking every time the slot may be free."""
    limiter = RateLimiter(redis)
    script, calls = limiter._take, 0

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await script(*args, **kwargs)

    limiter._take = counted  # type: ignore[assignment]
    account = Limit(rate=60, burst=1)
    chats = [[(f"chat:{n}", Limit(rate=1, burst=3)), ("account", account)] for n in range(30)]
    waited = await asyncio.gather(*(limiter.take(tenant, "telegram", scopes) for scopes in chats))
    assert max(waited) >= 0.4  # the account limit really spread the 30 sends over ~0.5 s
    assert calls <= 4 * len(chats), calls  # one poller at a time; every waiter polling made ~15 calls per send
