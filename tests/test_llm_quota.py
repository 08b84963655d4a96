"""Token budgets (llm.quota + llm.metered) against the real Redis, the real PostgreSQL and the OpenAI double."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from doubles.openai import OpenAIDouble
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot import keys, tables
from bot.assist.observe import Observer
from llm.metered import CallMeta, MeteredProvider
from llm.provider import ChatMessage, ChatProvider, ChatRequest, ProviderConfig, close_clients
from llm.quota import Budget, QuotaLedger, Refusal, Reservation

NOW_MS = 1_800_000_000_000


@pytest.fixture
async def double() -> AsyncIterator[OpenAIDouble]:
    async with OpenAIDouble("sk-test") as d:
        yield d
    await close_clients()


def _budget(tenant: str, limit: int | None, name: str = "daily") -> Budget:
    return Budget(name=name, key=keys.llm_budget(tenant, "day", "2026-12-02"), limit=limit, ttl_seconds=600)


def _metered(double: OpenAIDouble, redis: Redis, db: AsyncEngine, webhook: str | None = None) -> MeteredProvider:
    config = ProviderConfig(base_url=double.base_url, api_key="sk-test", model="gpt-test", timeout_seconds=10)
    return MeteredProvider(ChatProvider(config), QuotaLedger(redis), Observer(db, webhook))


async def test_fifty_way_burst_at_the_edge_of_a_budget_never_overspends(
    redis: Redis, tenant: str, double: OpenAIDouble, pg_engine: AsyncEngine
) -> None:
    double.latency = 0.05  # the calls overlap: all 50 reserve before the first one settles
    metered = _metered(double, redis, pg_engine)
    request = ChatRequest(messages=(ChatMessage(role="user", content="Your haircut is at 17:00. " * 8),), max_tokens=80)
    limit = request.worst_case() * 7 + request.worst_case() // 2  # room for 7.5 worst cases, far fewer than 50
    budget = _budget(tenant, limit)
    meta = CallMeta(tenant=tenant, conversation="burst", purpose="paraphrase")

    outcomes = await asyncio.gather(*(metered.call(request, [budget], meta, lambda c: c.text) for _ in range(50)))

    made = [o for o in outcomes if o.outcome == "ok"]
    refused = [o for o in outcomes if o.outcome == "over_budget"]
    assert len(made) + len(refused) == 50
    assert made and refused  # the edge was reached, and calls were made up to it
    overspend = max(0, double.billed - limit)
    assert overspend == 0, f"provider billed {double.billed} tokens against a budget of {limit}"
    assert await metered.ledger.used(budget) == double.billed  # the ledger holds exactly what the provider reported
    async with pg_engine.connect() as conn:
        rows = (
            await conn.execute(
                select(func.count(), func.sum(tables.LLM_USAGE.c.prompt_tokens + tables.LLM_USAGE.c.completion_tokens))
                .where(tables.LLM_USAGE.c.tenant == tenant)
            )
        ).one()
    assert rows == (len(made), double.billed)  # one usage row per call made, with the reported tokens


async def test_reserve_is_all_or_nothing_across_budgets(redis: Redis, tenant: str) -> None:
    ledger = QuotaLedger(redis)
    roomy, tight = _budget(tenant, 1000), Budget(name="customer_daily", key=keys.llm_budget(tenant, "conv:c", "d"),
                                                 limit=100, ttl_seconds=600)  # fmt: skip
    refusal = await ledger.reserve([roomy, tight], 150, NOW_MS)
    assert isinstance(refusal, Refusal) and refusal.budget.name == "customer_daily"
    held = await ledger.reserve([roomy, tight], 100, NOW_MS)
    assert isinstance(held, Reservation)
    await ledger.settle(held, 40)
    assert (await ledger.used(roomy), await ledger.used(tight)) == (40, 40)
    assert isinstance(await ledger.reserve([roomy, tight], 61, NOW_MS), Refusal)  # 40 used + 61 > 100
    assert isinstance(await ledger.reserve([roomy, tight], 60, NOW_MS), Reservation)


async def test_a_crashed_workers_reservation_expires(redis: Redis, tenant: str) -> None:
    ledger = QuotaLedger(redis, hold_seconds=30)
    budget = _budget(tenant, 500)
    assert isinstance(await ledger.reserve([budget], 500, NOW_MS), Reservation)  # never settled: the worker died
    assert isinstance(await ledger.reserve([budget], 1, NOW_MS + 29_000), Refusal)
    assert isinstance(await ledger.reserve([budget], 500, NOW_MS + 30_000), Reservation)


async def test_no_limit_still_counts(redis: Redis, tenant: str) -> None:
    ledger = QuotaLedger(redis)
    budget = _budget(tenant, None)
    held = await ledger.reserve([budget], 10**9, NOW_MS)
    assert isinstance(held, Reservation)
    assert await ledger.settle(held, 1234) == []  # no limit: no alerts
    assert await ledger.used(budget) == 1234


async def test_alerts_at_80_and_100_percent_once_per_period(
    redis: Redis, tenant: str, double: OpenAIDouble, pg_engine: AsyncEngine
) -> None:
    posted: list[dict[str, object]] = []

    async def hook(request: web.Request) -> web.Response:
        posted.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/alerts", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        metered = _metered(double, redis, pg_engine, webhook=f"http://127.0.0.1:{port}/alerts")
        request = ChatRequest(messages=(ChatMessage(role="user", content="x" * 40),), max_tokens=20)
        budget = _budget(tenant, request.worst_case() * 4)
        meta = CallMeta(tenant=tenant, conversation="c", purpose="paraphrase")
        outcomes = [(await metered.call(request, [budget], meta, lambda c: c.text)).outcome for _ in range(20)]
    finally:
        await runner.cleanup()
    made = outcomes.count("ok")
    assert outcomes == ["ok"] * made + ["over_budget"] * (20 - made)  # once spent, nothing more is asked
    assert len(double.completions()) == made
    used = await metered.ledger.used(budget)
    assert used == double.billed and budget.limit - request.worst_case() < used <= budget.limit  # type: ignore[operator]
    # 100%: the budget cannot take another call (80% passed on the way). Each once in the period.
    assert [(p["budget"], p["threshold"]) for p in posted] == [("daily", 80), ("daily", 100)]
    assert posted[1] == {"tenant": tenant, "budget": "daily", "threshold": 100, "used_tokens": used,
                         "limit_tokens": budget.limit}  # fmt: skip
    assert json.dumps(posted[0])


async def test_settled_usage_raises_each_alert_once(redis: Redis, tenant: str) -> None:
    ledger = QuotaLedger(redis)
    budget = _budget(tenant, 100)
    raised = []
    for used in (50, 35, 10, 5):  # 50%, 85%, 95%, 100%
        held = await ledger.reserve([budget], 5, NOW_MS)
        assert isinstance(held, Reservation)
        raised.append([a.threshold for a in await ledger.settle(held, used)])
    assert raised == [[], [80], [], [100]]
    refusal = await ledger.reserve([budget], 1, NOW_MS)
    assert isinstance(refusal, Refusal) and refusal.alerts == ()  # both already raised in this period
