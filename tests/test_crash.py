"""The crash suite: real ``bookingbot serve`` + ``bookingbot worker`` processes, the real PostgreSQL, a Telegram
double, and faults struck mid-burst (the scenarios of ``bench/faults.py``, smaller). Each asserts that every
reply arrived (at most one repeat per chat: a send in flight at the fault), every conversation finished,
every booking was made once and every inbound message was logged once."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

from bench.faults import Outcome, OwnRedis, scenario
from bench.procstack import HEALTH_KEY, Bot, Process, booking_turns, write_config
from bot import keys
from bot import redis as redis_conn
from bot.config import load_config
from bot.pipeline import Pipeline
from bot.runtime import Runtime
from channels.base import InboundMessage

ROOT = Path(__file__).resolve().parent.parent


def _assert_recovered(outcome: Outcome) -> None:
    counts = outcome.counts
    assert (counts.lost, outcome.stuck, counts.reordered) == (0, 0, 0), outcome
    assert outcome.worst_duplicates <= 1, outcome  # only the send in flight at the fault may repeat
    assert outcome.bookings_wrong == 0, outcome
    assert outcome.log_wrong == 0, outcome
    # How fast it recovers is bench/faults.py's to measure; here "not stuck" means finished within `limit`.


async def test_worker_killed_mid_burst_a_second_worker_finishes_its_conversations(
    services_env: dict[str, str],
) -> None:
    _assert_recovered(await scenario("kill", 10, services_env, limit=180))


async def test_redis_killed_and_restarted_with_aof_server_and_worker_recover(services_env: dict[str, str]) -> None:
    outcome = await scenario("redis", 10, services_env, limit=180)
    _assert_recovered(outcome)
    assert outcome.counts.duplicated == 0  # a delivered reply's record waits out the outage


async def test_a_redelivery_after_redis_lost_recent_writes_does_not_book_twice(services_env: dict[str, str]) -> None:
    """Redis restored from an older state (no AOF, or a failover that lost writes): the session is back at the
    confirmation and the dedupe mark is gone, so the provider's redelivered "yes" runs the turn again. The
    booking is keyed in SQL, so the customer keeps one booking."""
    settings = load_config(ROOT / "config.yaml", env=services_env)
    tenant = f"crash-{uuid4().hex[:10]}"
    runtime = await Runtime.start(settings.model_copy(update={"tenants": {tenant: settings.tenants["demo"]}}))
    try:
        pipeline, now, user = Pipeline(runtime), datetime.now(UTC), "42"
        for n, text in enumerate(booking_turns(now)):
            msg = InboundMessage(tenant=tenant, channel="telegram", user_id=user, event_id=f"e{n}", text=text)
            await pipeline.handle(msg, now)
        before_yes = await runtime.redis.get(keys.session(tenant, f"telegram:{user}"))
        yes = InboundMessage(tenant=tenant, channel="telegram", user_id=user, event_id="e-yes", text="yes")
        assert (await pipeline.handle(yes, now)).session.state == "booked"
        await runtime.redis.set(keys.session(tenant, f"telegram:{user}"), before_yes)  # the lost writes
        again = await pipeline.handle(yes, now)
        assert again.session.state == "booked" and not again.duplicate
        bookings = await runtime.tenant(tenant).calendar.active_bookings()
        assert [(b.customer, b.start.strftime("%H:%M")) for b in bookings] == [(f"telegram:{user}", "17:00")]
    finally:
        await runtime.drop_tenant(tenant)
        await runtime.aclose()


async def test_a_worker_started_before_redis_waits_for_it_and_then_works(
    services_env: dict[str, str], tmp_path: Path
) -> None:
    """No Redis at start-up: the worker neither exits nor spins; it starts polling once Redis is there."""
    redis = OwnRedis(tmp_path)  # not started yet: its port is free
    config = tmp_path / "config.yaml"
    bot = Bot(f"crash-{uuid4().hex[:8]}", "920001:wait", "secret")
    settings = write_config(services_env | {"REDIS_URL": redis.url}, [bot], "http://127.0.0.1:9", config)
    argv = [sys.executable, "-m", "bot", "worker", "--config", str(config)]
    worker = await Process.start("worker", argv, tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 120  # generous: arq itself tries 5 times, a second apart, first
        while "storage unreachable" not in (tmp_path / "worker.log").read_text(errors="replace"):
            worker.check_alive()
            assert time.monotonic() < deadline, "the worker never said it is waiting for Redis"
            await asyncio.sleep(0.2)
        await redis.start()
        client = await redis_conn.connect(redis.url, str(tmp_path))
        try:
            while not await client.exists(HEALTH_KEY):  # arq's key, set at the worker's first poll
                worker.check_alive()
                assert time.monotonic() < deadline + 60, "the worker did not start polling"
                await asyncio.sleep(0.2)
        finally:
            await redis_conn.close(client)
        assert settings.redis_url == redis.url
    finally:
        await worker.stop()
        await redis.kill()
