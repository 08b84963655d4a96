"""Per-conversation inbox on the real Redis: FIFO, lease exclusivity and expiry, failures, races, and the
cross-process order test (50 messages from two processes: in arrival order, none lost, none twice)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
from pathlib import Path

import pytest
from conftest import REDIS_URL
from redis.asyncio import Redis

from bot import keys
from bot.inbox import Inbox

ROOT = Path(__file__).resolve().parent.parent
CONV = "telegram:42"


@pytest.fixture
def inbox(redis: Redis) -> Inbox:
    return Inbox(redis)


class Recorder:
    """A handler that records what it handled; optionally waits on a gate or fails on one item."""

    def __init__(self, gate: asyncio.Event | None = None, fail_on: str | None = None) -> None:
        self.handled: list[str] = []
        self.started = asyncio.Event()
        self.gate, self.fail_on = gate, fail_on

    async def __call__(self, item: str) -> None:
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if item == self.fail_on:
            raise RuntimeError(f"cannot handle {item}")
        self.handled.append(item)


async def push(redis: Redis, tenant: str, item: str, conversation: str = CONV) -> None:
    """Append to an inbox as bot.ingest's script does (RPUSH); scheduling drains is the ingest's business."""
    await redis.rpush(keys.inbox(tenant, conversation), item)  # type: ignore[misc]


async def push_all(redis: Redis, tenant: str, items: list[str]) -> None:
    for item in items:
        await push(redis, tenant, item)


async def test_drain_handles_items_in_order_and_releases(inbox: Inbox, redis: Redis, tenant: str) -> None:
    items = [f"m{n}" for n in range(10)]
    await push_all(redis, tenant, items)
    assert await inbox.pending(tenant, CONV) == 10
    handler = Recorder()
    assert await inbox.drain(tenant, CONV, handler, owner="w1") == 10
    assert handler.handled == items
    assert await inbox.pending(tenant, CONV) == 0
    assert await redis.exists(keys.lease(tenant, CONV)) == 0
    assert await inbox.drain(tenant, CONV, handler, owner="w1") == 0  # empty: nothing to do, no lease left
    assert await redis.exists(keys.lease(tenant, CONV)) == 0


async def test_conversations_are_separate(inbox: Inbox, redis: Redis, tenant: str) -> None:
    await push(redis, tenant, "a", "telegram:1")
    await push(redis, tenant, "b", "telegram:2")
    handler = Recorder()
    assert await inbox.drain(tenant, "telegram:1", handler, owner="w") == 1
    assert handler.handled == ["a"]
    assert await inbox.pending(tenant, "telegram:2") == 1


async def test_lease_is_exclusive_and_pushes_during_a_drain_reach_it(inbox: Inbox, redis: Redis, tenant: str) -> None:
    await push(redis, tenant, "first")
    gate = asyncio.Event()
    holder = Recorder(gate)
    draining = asyncio.create_task(inbox.drain(tenant, CONV, holder, owner="holder"))
    await holder.started.wait()

    other = Recorder()
    assert await inbox.drain(tenant, CONV, other, owner="other") == 0
    await push(redis, tenant, "second")  # the lease holder reaches it
    gate.set()
    assert await draining == 2
    assert holder.handled == ["first", "second"]
    assert other.handled == []


async def test_handler_failure_keeps_the_item_and_releases(inbox: Inbox, redis: Redis, tenant: str) -> None:
    await push_all(redis, tenant, ["a", "b", "c"])
    failing = Recorder(fail_on="b")
    with pytest.raises(RuntimeError, match="cannot handle b"):
        await inbox.drain(tenant, CONV, failing, owner="w1")
    assert failing.handled == ["a"]
    assert await redis.lrange(keys.inbox(tenant, CONV), 0, -1) == ["b", "c"]  # type: ignore[misc]
    assert await redis.exists(keys.lease(tenant, CONV)) == 0

    retry = Recorder()
    assert await inbox.drain(tenant, CONV, retry, owner="w2") == 2
    assert retry.handled == ["b", "c"]


async def test_cancelled_drain_keeps_the_item_and_releases(inbox: Inbox, redis: Redis, tenant: str) -> None:
    await push(redis, tenant, "a")
    stuck = Recorder(asyncio.Event())
    draining = asyncio.create_task(inbox.drain(tenant, CONV, stuck, owner="w1"))
    await stuck.started.wait()
    draining.cancel()
    with pytest.raises(asyncio.CancelledError):
        await draining
    assert await inbox.pending(tenant, CONV) == 1
    assert await redis.exists(keys.lease(tenant, CONV)) == 0


async def test_expired_lease_of_a_dead_drainer_lets_another_continue(
    inbox: Inbox, redis: Redis, tenant: str
) -> None:
    await push_all(redis, tenant, ["a", "b"])
    await redis.set(keys.lease(tenant, CONV), "dead-worker", px=200)  # a drainer that died mid-item
    handler = Recorder()
    assert await inbox.drain(tenant, CONV, handler, owner="w2") == 0
    await push(redis, tenant, "c")  # the lease holder reaches it
    await asyncio.sleep(0.25)
    assert await inbox.drain(tenant, CONV, handler, owner="w2") == 3
    assert handler.handled == ["a", "b", "c"]  # the dead drainer's head is redriven (at least once)


async def test_lease_is_renewed_while_a_long_handler_runs(inbox: Inbox, redis: Redis, tenant: str) -> None:
    await push(redis, tenant, "slow")
    gate = asyncio.Event()
    slow = Recorder(gate)
    draining = asyncio.create_task(inbox.drain(tenant, CONV, slow, owner="slow", lease_ms=150))
    await slow.started.wait()
    await asyncio.sleep(0.5)  # over three lease lifetimes
    assert await redis.pttl(keys.lease(tenant, CONV)) > 0
    assert await inbox.drain(tenant, CONV, Recorder(), owner="other", lease_ms=150) == 0
    gate.set()
    assert await draining == 1


async def test_drainer_that_lost_its_lease_leaves_the_head(inbox: Inbox, redis: Redis, tenant: str) -> None:
    await push_all(redis, tenant, ["a", "b"])
    lease = keys.lease(tenant, CONV)

    async def overtaken(item: str) -> None:  # our lease expired and another drainer took it meanwhile
        await redis.set(lease, "thief")

    assert await inbox.drain(tenant, CONV, overtaken, owner="w1") == 0
    assert await inbox.pending(tenant, CONV) == 2
    assert await redis.get(lease) == "thief"  # someone else's lease is never released or renewed by us


async def test_bad_lease_is_refused(inbox: Inbox, tenant: str) -> None:
    with pytest.raises(ValueError, match="lease_ms"):
        await inbox.drain(tenant, CONV, Recorder(), owner="w", lease_ms=0)


async def test_order_across_two_processes(redis: Redis, tenant: str) -> None:
    """50 messages for one conversation pushed and drained concurrently by two OS processes."""
    await redis.rpush(keys.scratch(tenant, "mutex"), "1")  # type: ignore[misc]
    workers = [
        await asyncio.create_subprocess_exec(
            *[sys.executable, str(ROOT / "tests" / "_order_worker.py"), REDIS_URL, tenant, CONV, name, "25"],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE,
        )
        for name in ("A", "B")
    ]
    for worker in workers:
        assert worker.stdout is not None
        assert await asyncio.wait_for(worker.stdout.readline(), timeout=30) == b"ready\n"
    await redis.rpush(keys.scratch(tenant, "go"), "go", "go")  # type: ignore[misc]
    outputs = [await asyncio.wait_for(w.communicate(), timeout=60) for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    reports = [json.loads(out) for out, _ in outputs]

    processed = [json.loads(i) for i in await redis.lrange(keys.scratch(tenant, "processed"), 0, -1)]  # type: ignore[misc]
    assert [p["seq"] for p in processed] == list(range(1, 51))  # arrival order, none lost, none twice
    for name in ("A", "B"):
        assert [p["index"] for p in processed if p["by"] == name] == list(range(25))
    assert await redis.lrange(keys.scratch(tenant, "overlaps"), 0, -1) == []  # type: ignore[misc]
    assert await redis.llen(keys.inbox(tenant, CONV)) == 0  # type: ignore[misc]
    assert sum(r["handled"] for r in reports) == 50
    # Which process drains depends on scheduling: on a loaded machine one may hold the lease throughout.
    switches = sum(a["by"] != b["by"] for a, b in itertools.pairwise(processed))
    assert switches > 5  # the two pushers really interleaved
