"""The LLM's token budgets and paraphrase cache, on the real Redis and PostgreSQL and the OpenAI double.

1. Quota operations/s: reserve + settle pairs (three budgets each: tenant day, month, conversation day, as every
   real call) from 16 concurrent tasks against the real Redis.
2. Overspend under a 50-way burst: 50 concurrent calls at the edge of a budget with room for about 7, through the
   real provider client to the double (20 ms latency); tokens the double billed beyond the budget, summed over
   the rounds (must be 0).
3. Paraphrase cache hit rate: every replay fixture run twice with the shipped config's LLM pointed at the double,
   the cache emptied first; hits / replies to paraphrase (from the ``bookingbot_llm_paraphrases_total`` metric).
4. Added latency per turn with a warm cache: the fixtures' mean time per turn with the LLM on (third run, all
   cached) minus with it off.

Usage: ``make bench-llm`` (REDIS_URL / DATABASE_URL point at the real services).
Last line: ``quota_ops_per_s=X overspend_tokens=0 cache_hit_rate=Y``.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

from prometheus_client import REGISTRY
from redis.asyncio import Redis

from bot import keys
from bot.assist.observe import Observer
from bot.config import load_config
from bot.devtools.replay import Replayer, load_fixture
from bot.runtime import Runtime
from llm.metered import CallMeta, MeteredProvider
from llm.provider import ChatMessage, ChatProvider, ChatRequest, ProviderConfig, close_clients
from llm.quota import Budget, QuotaLedger, Reservation
from tests.doubles.openai import OpenAIDouble

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = sorted((ROOT / "fixtures" / "conversations").rglob("*.yaml"))
QUOTA_SECONDS = float(os.environ.get("BENCH_QUOTA_SECONDS", "3"))
QUOTA_TASKS = 16
BURST, BURST_ROUNDS = 50, 5


def _budgets(tenant: str, conversation: str, daily: int | None) -> list[Budget]:
    return [
        Budget(name="daily", key=keys.llm_budget(tenant, "day", "bench"), limit=daily, ttl_seconds=600),
        Budget(name="monthly", key=keys.llm_budget(tenant, "month", "bench"), limit=None, ttl_seconds=600),
        Budget(
            name="customer_daily",
            key=keys.llm_budget(tenant, f"conv:{conversation}", "bench"),
            limit=None,
            ttl_seconds=600,
            alert=False,
        ),
    ]


async def _purge(redis: Redis, tenant: str) -> None:
    async for key in redis.scan_iter(match=keys.tenant_pattern(tenant), count=500):
        await redis.delete(key)


async def quota_ops_per_s(redis: Redis) -> float:
    tenant = f"bench-llm-{uuid.uuid4().hex[:8]}"
    ledger = QuotaLedger(redis)
    deadline = time.perf_counter() + QUOTA_SECONDS
    done = 0

    async def task(n: int) -> None:
        nonlocal done
        budgets = _budgets(tenant, f"c{n}", 10**12)
        while time.perf_counter() < deadline:
            held = await ledger.reserve(budgets, 700, int(time.time() * 1000))
            assert isinstance(held, Reservation)
            await ledger.settle(held, 150)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(task(n) for n in range(QUOTA_TASKS)))
    elapsed = time.perf_counter() - started
    await _purge(redis, tenant)
    return done / elapsed


async def burst(redis: Redis, runtime: Runtime, double: OpenAIDouble) -> tuple[int, int, int]:
    """(calls made, calls refused, tokens billed beyond the budget) over the rounds."""
    double.latency = 0.02
    config = ProviderConfig(base_url=double.base_url, api_key="sk-bench", model="gpt-bench", timeout_seconds=10)
    metered = MeteredProvider(ChatProvider(config), QuotaLedger(redis), Observer(runtime.db, None))
    request = ChatRequest(messages=(ChatMessage(role="user", content="Haircut, Tue 24 Nov at 17:00. " * 6),),
                          max_tokens=80)  # fmt: skip
    made = refused = overspend = 0
    for _ in range(BURST_ROUNDS):
        tenant = f"bench-llm-{uuid.uuid4().hex[:8]}"
        limit = request.worst_case() * 7 + request.worst_case() // 3
        budgets = _budgets(tenant, "burst", limit)
        meta = CallMeta(tenant=tenant, conversation="burst", purpose="paraphrase")
        billed_before = double.billed
        outcomes = await asyncio.gather(*(metered.call(request, budgets, meta, lambda c: c.text) for _ in range(BURST)))
        made += sum(o.outcome == "ok" for o in outcomes)
        refused += sum(o.outcome == "over_budget" for o in outcomes)
        overspend += max(0, double.billed - billed_before - limit)
        await runtime.drop_tenant(tenant)
    double.latency = 0.0
    return made, refused, overspend


def _paraphrases(source: str) -> float:
    return REGISTRY.get_sample_value("bookingbot_llm_paraphrases_total", {"source": source}) or 0.0


async def replay_all(runtime: Runtime) -> tuple[int, float]:
    """(turns, seconds) of one run of every fixture; fails loudly if a fixture fails."""
    replayer = Replayer(runtime)
    turns, seconds = 0, 0.0
    for path in FIXTURES:
        started = time.perf_counter()
        result = await replayer.run(path)
        seconds += time.perf_counter() - started
        assert result.passed, f"{path}: {result.failures}"
        turns += sum(step.wait is None for step in load_fixture(path).turns)
    return turns, seconds


async def main() -> None:
    double = OpenAIDouble("sk-bench")
    await double.start()
    base_env = {k: os.environ[k] for k in ("REDIS_URL", "DATABASE_URL") if k in os.environ}
    off = await Runtime.start(load_config(ROOT / "config.yaml", env=base_env))
    on = await Runtime.start(load_config(ROOT / "config.yaml", env={
        **base_env, "OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": double.base_url}))  # fmt: skip
    try:
        ops = await quota_ops_per_s(on.redis)
        made, refused, overspend = await burst(on.redis, on, double)
        for tenant in ("demo", "demo-ru"):
            async for key in on.redis.scan_iter(match=keys.paraphrase(tenant, "*")):
                await on.redis.delete(key)
        before = {s: _paraphrases(s) for s in ("cache", "llm", "template")}
        calls_before = len(double.calls)
        await replay_all(on)
        await replay_all(on)
        counts = {s: _paraphrases(s) - before[s] for s in before}
        provider_calls = len(double.calls) - calls_before
        hit_rate = counts["cache"] / sum(counts.values())
        turns_off, seconds_off = await replay_all(off)
        turns_on, seconds_on = await replay_all(on)  # warm: a third run
        added_ms = (seconds_on / turns_on - seconds_off / turns_off) * 1000
    finally:
        await on.aclose()
        await off.aclose()
        await close_clients()
        await double.stop()
    print("| measure | value |")
    print("|---|---|")
    print(f"| quota reserve + settle (3 budgets each, {QUOTA_TASKS} tasks, real Redis) | {ops:,.0f} ops/s |")
    print(f"| {BURST}-way burst at a budget's edge, {BURST_ROUNDS} rounds | {made} calls made, {refused} refused, "
          f"{overspend} tokens over budget |")  # fmt: skip
    print(f"| fixtures run twice ({len(FIXTURES)} fixtures): replies paraphrased | {int(counts['llm'])} by the LLM, "
          f"{int(counts['cache'])} from the cache, {int(counts['template'])} kept as template; "
          f"{provider_calls} provider calls (extraction included) |")  # fmt: skip
    print(f"| paraphrase cache hit rate over both runs | {hit_rate:.3f} |")
    print(f"| mean time per turn, LLM off / on with a warm cache | {seconds_off / turns_off * 1000:.2f} ms / "
          f"{seconds_on / turns_on * 1000:.2f} ms ({added_ms:+.2f} ms) |")  # fmt: skip
    print(f"quota_ops_per_s={ops:.0f} overspend_tokens={overspend} cache_hit_rate={hit_rate:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
