"""Turns per second and per-turn latency through the whole in-process pipeline, next to an aiogram 3 bot.

bookingbot: session load + save on the real Redis, message log and local calendar on the real PostgreSQL,
the dialog engine with its extractors. aiogram: a hand-written bot with Dispatcher + RedisStorage FSM on the
same Redis, Bot API answered in-process (``bench/aiogram_baseline.py``). Both run the same 6-turn booking dialog
at 1 and at 100 concurrent conversations in the same run.

Usage: ``make bench`` (REDIS_URL / DATABASE_URL point at the real services).
Last line: ``speedup_vs_aiogram=X.XX p99_ms=Y.YY``: the turns/s ratio at 100 concurrent conversations, and the
per-turn p99 of one conversation (at 100 the table's p99 is dominated by queueing behind the other 99).
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench.aiogram_baseline import EXPECTED_DATA, TURNS, measure_aiogram
from bench.latency import percentile_ms
from bot.config import load_config
from bot.pipeline import Pipeline
from bot.runtime import Runtime, Tenant
from channels.base import InboundMessage

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime.fromisoformat("2026-11-23T09:00:00+00:00")  # a Monday: "tomorrow" is 2026-11-24
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))  # rounds per measurement (x50 at 1 conversation)
REPEATS = int(os.environ.get("BENCH_REPEATS", "4"))  # measurements per bot, interleaved: noise hits both alike


@dataclass
class Stats:
    turns: int
    seconds: float
    latencies: list[float]

    def __add__(self, other: Stats) -> Stats:
        return Stats(self.turns + other.turns, self.seconds + other.seconds, self.latencies + other.latencies)

    @property
    def per_second(self) -> float:
        return self.turns / self.seconds

    def pct(self, q: float) -> float:
        return percentile_ms(self.latencies, round(q * 100))

    def row(self, name: str, conversations: int) -> str:
        return f"| {name} | {conversations} | {self.per_second:,.0f} | {self.pct(0.50):.2f} | {self.pct(0.99):.2f} |"


async def _conversation(pipeline: Pipeline, tenant: Tenant, user: str, latencies: list[float]) -> None:
    for turn, text in enumerate(TURNS):
        msg = InboundMessage(tenant=tenant.id, channel="telegram", user_id=user, event_id=f"{user}-{turn}", text=text)
        started = time.perf_counter()
        result = await pipeline.handle(msg, NOW)
        latencies.append(time.perf_counter() - started)
    if result.session.state != "confirm" or result.session.slots != EXPECTED_DATA:
        raise AssertionError(f"{user} ended in {result.session.state} with {result.session.slots}")


async def run_bookingbot(runtime: Runtime, conversations: int) -> Stats:
    """``conversations`` customers at once, each through the 6 turns; repeated for ``_rounds`` rounds.

    One tenant (a fresh alias of ``demo``) serves every round, as a long-running tenant would; each round's
    customers are new, so every conversation starts from an empty session.
    """
    pipeline = Pipeline(runtime)
    tenant = runtime.add_tenant(f"bench~{uuid.uuid4().hex[:8]}", runtime.tenant("demo").config)
    latencies: list[float] = []
    seconds = 0.0
    try:
        for round_ in range(_rounds(conversations)):
            users = [f"bench-{round_}-{i}" for i in range(conversations)]
            started = time.perf_counter()
            await asyncio.gather(*(_conversation(pipeline, tenant, user, latencies) for user in users))
            seconds += time.perf_counter() - started
    finally:
        await runtime.drop_tenant(tenant.id)
    return Stats(len(latencies), seconds, latencies)


async def run_baseline(conversations: int) -> Stats:
    run = await measure_aiogram(
        conversations, os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), rounds=_rounds(conversations)
    )
    return Stats(len(run.latencies), run.wall_seconds, run.latencies)


def _rounds(conversations: int) -> int:
    """Enough rounds for a meaningful p99: a single conversation has only 6 turns."""
    return ROUNDS * (50 if conversations == 1 else 1)


async def main() -> None:
    env = {
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    }
    runtime = await Runtime.start(load_config(ROOT / "config.yaml", env=env))
    # aiogram.types alone adds ~180k objects; a full collection then pauses >100 ms. Both bots run after the
    # same freeze (a long-running server would do the same after start-up).
    gc.collect()
    gc.freeze()
    try:
        await run_bookingbot(runtime, 10)  # warm-up: connections, caches, JIT-free but import-heavy paths
        print("| bot | concurrent conversations | turns/s | p50 ms | p99 ms |")
        print("|---|---|---|---|---|")
        results = {}
        for conversations in (1, 100):
            ours, theirs = Stats(0, 0.0, []), Stats(0, 0.0, [])
            for _ in range(REPEATS):
                ours += await run_bookingbot(runtime, conversations)
                theirs += await run_baseline(conversations)
            results[conversations] = (ours, theirs)
            print(ours.row("bookingbot", conversations))
            print(theirs.row("aiogram 3 + RedisStorage", conversations))
    finally:
        await runtime.aclose()
    ours, theirs = results[100]
    alone, _ = results[1]
    # At 100 conversations in flight, a turn waits for the other 99 (Little's law: mean latency is at least
    # conversations / throughput); the per-turn cost a customer sees without that queue is the 1-conversation p99.
    print(f"queueing at 100 conversations: mean latency >= {100 / ours.per_second * 1000:.1f} ms (Little's law); "
          f"p99 {ours.pct(0.99):.2f} ms")
    print(f"speedup_vs_aiogram={ours.per_second / theirs.per_second:.2f} p99_ms={alone.pct(0.99):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
