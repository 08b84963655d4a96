"""``bookingbot worker --check``: fresh while a real arq worker polls the queue, gone when it stops."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from _stack import ROOT

from bot.config import load_config
from bot.ops.heartbeat import check
from bot.settings import Settings
from bot.worker import make_worker

DEADLINE = 120.0


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not await condition():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_worker_check_follows_the_worker(services_env: dict[str, str]) -> None:
    settings = load_config(ROOT / "config.yaml", env=services_env)
    queue = f"test-heartbeat-{uuid.uuid4().hex}"
    assert await check(settings, queue_name=queue) == 1  # nobody polls this queue yet
    worker = make_worker(settings, queue_name=queue)
    task = asyncio.create_task(worker.async_run())
    try:
        await until(lambda: _alive(settings, queue), "the first heartbeat")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()
    assert await check(settings, queue_name=queue) == 1  # a clean stop removes the heartbeat


async def _alive(settings: Settings, queue: str) -> bool:
    return await check(settings, queue_name=queue) == 0
