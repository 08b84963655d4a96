"""Reminders as arq deferred jobs (``bookingbot worker``): one job per (booking, start, offset), never twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from bot import keys
from bot.booking.base import Booking
from bot.ingest import loads_job
from bot.reminders import REMIND_JOB, Reminder, Reminders
from bot.settings import Settings
from bot.worker import worker_settings

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def booking(tenant: str, start: datetime, booking_id: str = "b1") -> Booking:
    return Booking(id=booking_id, tenant=tenant, key="k", customer="telegram:1", service="haircut", start=start,
                   minutes=60, name="John", phone="+447700900123")  # fmt: skip


async def test_arq_jobs_are_deferred_keyed_and_dropped(redis: Redis, tenant: str) -> None:
    reminders = Reminders(redis)
    queue = keys.scratch(tenant, "queue")
    reminders.use_arq(queue)
    start = NOW + timedelta(days=2)
    made = await reminders.schedule(booking(tenant, start), [24 * 60, 2 * 60], NOW)
    await reminders.schedule(booking(tenant, start), [24 * 60, 2 * 60], NOW)  # a redriven booking: no new jobs
    queued = await redis.zrange(queue, 0, -1, withscores=True)
    assert [(job, score) for job, score in queued] == [
        (r.job_id, r.due.timestamp() * 1000) for r in sorted(made, key=lambda r: r.due)
    ]
    body = loads_job(await redis.get(keys.job(made[0].job_id)))
    assert (body["f"], body["a"]) == (REMIND_JOB, [tenant, made[0].key])
    assert Reminder.parse(tenant, made[0].key) == made[0]
    assert [r.key for r in await reminders.scheduled(tenant)] == [r.key for r in sorted(made, key=lambda r: r.due)]

    moved = await reminders.schedule(booking(tenant, start + timedelta(days=1)), [2 * 60], NOW)  # a reschedule
    assert await reminders.drop(tenant, "b1") == 3
    assert await redis.zcard(queue) == 0 and await reminders.scheduled(tenant) == []
    assert not await redis.exists(*(keys.job(r.job_id) for r in made + moved))


async def test_dropping_a_tenant_drops_all_its_reminder_jobs(redis: Redis, tenant: str) -> None:
    reminders = Reminders(redis)
    queue = keys.scratch(tenant, "queue")
    reminders.use_arq(queue)
    start = NOW + timedelta(days=2)
    made = [r for b in ("b1", "b2") for r in await reminders.schedule(booking(tenant, start, b), [60], NOW)]
    assert len(made) == 2 and await redis.zcard(queue) == 2
    assert await reminders.drop(tenant) == 2
    assert await redis.zcard(queue) == 0 and await reminders.scheduled(tenant) == []
    assert not await redis.exists(*(keys.job(r.job_id) for r in made))


async def test_worker_registers_the_reminder_job() -> None:
    settings = Settings.model_validate({
        "redis_url": "redis://127.0.0.1:6379/0",
        "tenants": {"t": {"name": "T", "hours": {"mon": ["10:00-18:00"]},
                          "services": [{"id": "haircut", "label": "Haircut", "minutes": 60}]}},
    })  # fmt: skip
    names = [f.name for f in worker_settings(settings)["functions"]]
    assert names == ["drain", REMIND_JOB]
