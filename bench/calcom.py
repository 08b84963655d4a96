"""100 customers of one tenant booking at once through the whole pipeline, against the cal.com double.

Each customer runs a 3-turn booking dialog ("haircut on <day> at <hour>, I'm ..." / phone / "yes") through
:class:`bot.pipeline.Pipeline` (sessions on the real Redis, message log and our booking record on the real
PostgreSQL) on a tenant with ``backend: calcom`` whose cal.com is the loopback double of
``tests/doubles/calcom.py`` with cal.com's real limit (120 requests a minute per key). Five creates lose their
answer after cal.com made the booking and the first five requests fail (503), so retries and reconciliation
are on the measured path.

Usage: ``python -m bench.calcom`` (REDIS_URL / DATABASE_URL point at the real services).
Last line: ``calcom_calls_per_booking=X http_429=N duplicates=0``.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from bot.config import load_config
from bot.pipeline import Pipeline
from bot.runtime import Runtime, Tenant
from bot.settings import BookingConfig, CalcomConfig
from channels.base import InboundMessage
from tests.doubles.calcom import CalcomDouble

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # a Monday
CUSTOMERS = int(os.environ.get("BENCH_CUSTOMERS", "100"))
EVENT_TYPES = {"haircut": 1001, "manicure": 1002, "colouring": 1003}
API_KEY = "cal_bench"


def _slot(index: int) -> tuple[date, int]:
    """A different hour for every customer: 10 a day (10:00-19:00), Monday to Saturday."""
    day, hour = NOW.date() + timedelta(days=1), 10 + index % 10
    for _ in range(index // 10):
        day += timedelta(days=1)
        while day.weekday() == 6:
            day += timedelta(days=1)
    while day.weekday() == 6:
        day += timedelta(days=1)
    return day, hour


async def _customer(pipeline: Pipeline, tenant: Tenant, index: int) -> str:
    day, hour = _slot(index)
    user = f"bench-{index}"
    turns = [f"haircut on {day.day} {day:%B} at {hour}:00, I'm Alex", f"+4477009{index:05d}", "yes"]
    state = ""
    for number, text in enumerate(turns):
        msg = InboundMessage(tenant=tenant.id, channel="telegram", user_id=user, event_id=f"{user}-{number}", text=text)
        state = (await pipeline.handle(msg, NOW)).session.state
    return state


async def main() -> None:
    env = {
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    }
    settings = load_config(ROOT / "config.yaml", env=env)
    double = CalcomDouble(API_KEY, {1001: 60, 1002: 45, 1003: 120}, timezone="Europe/London", now=lambda: NOW)
    await double.start()
    runtime = await Runtime.start(settings)
    calcom = CalcomConfig(api_base=double.url, api_key=API_KEY, webhook_secret="bench", event_types=EVENT_TYPES)
    demo = settings.tenants["demo"]
    cfg = demo.model_copy(update={"booking": BookingConfig(backend="calcom", calcom=calcom)})
    tenant = runtime.add_tenant(f"bench-calcom~{uuid.uuid4().hex[:8]}", cfg)
    try:
        double.lose_next = 5  # made, answer lost: found by the metadata key
        double.fail_next(5, status=503)  # not made (the first calls: slots, then creates): retried
        started = time.perf_counter()
        pipeline = Pipeline(runtime)
        states = await asyncio.gather(*(_customer(pipeline, tenant, i) for i in range(CUSTOMERS)))
        seconds = time.perf_counter() - started
        ours = await tenant.calendar.active_bookings()
    finally:
        await runtime.drop_tenant(tenant.id)
        await runtime.aclose()
        await double.stop()
    made = double.accepted()
    keys = Counter(b.metadata.get("key") for b in made)
    duplicates = sum(n - 1 for n in keys.values())
    booked = Counter(states)["booked"]
    calls = len(double.calls)
    kinds = Counter(c.method.split()[0] + " " + "/".join(c.method.split()[1].split("/")[:3]) for c in double.calls)
    print("| customers | booked | cal.com bookings | our records | cal.com requests | 429s | seconds |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {CUSTOMERS} | {booked} | {len(made)} | {len(ours)} | {calls} | {double.rate_limited} | {seconds:.1f} |")
    print("requests by kind: " + ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())))
    if booked != CUSTOMERS or len(made) != CUSTOMERS or len(ours) != CUSTOMERS:
        raise SystemExit(f"expected {CUSTOMERS} bookings: dialogs {booked}, cal.com {len(made)}, ours {len(ours)}")
    print(f"calcom_calls_per_booking={calls / len(made):.2f} http_429={double.rate_limited} duplicates={duplicates}")


if __name__ == "__main__":
    asyncio.run(main())
