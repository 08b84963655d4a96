"""One of the two processes of the order test in ``tests/test_inbox.py`` (not a test module itself).

    python tests/_order_worker.py REDIS_URL TENANT CONVERSATION NAME COUNT

Prints ``ready``, waits for the test's go signal, then pushes COUNT items to the conversation's inbox,
draining whenever a push says no drainer holds the lease, with random pauses in between. Each push happens
under a cross-process mutex together with an INCR, so an item's ``seq`` is its place in the arrival order.
The handler appends each item to the ``processed`` list and flags any overlap with another running handler.
Finally prints one JSON line: ``{"drains": ..., "handled": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys

from redis.asyncio import Redis

from bot import keys
from bot import redis as redis_conn
from bot.inbox import Inbox


class OrderWorker:
    def __init__(self, redis: Redis, tenant: str, conversation: str, name: str) -> None:
        self.redis, self.tenant, self.conversation, self.name = redis, tenant, conversation, name
        self.inbox = Inbox(redis)

    def key(self, name: str) -> str:
        return keys.scratch(self.tenant, name)

    async def handle(self, item: str) -> None:
        if not await self.redis.set(self.key("busy"), self.name, nx=True, px=10_000):
            await self.redis.rpush(self.key("overlaps"), f"{self.name} {item}")  # type: ignore[misc]
        await self.redis.rpush(self.key("processed"), item)  # type: ignore[misc]
        await asyncio.sleep(random.random() / 1000)
        await self.redis.delete(self.key("busy"))

    async def push(self, index: int) -> bool:
        # The mutex binds the INCR to this push: no other push can land between them.
        await self.redis.blpop([self.key("mutex")], timeout=10)  # type: ignore[misc]
        try:
            seq = await self.redis.incr(self.key("seq"))
            item = json.dumps({"seq": seq, "by": self.name, "index": index})
            return await self.inbox.push(self.tenant, self.conversation, item)
        finally:
            await self.redis.rpush(self.key("mutex"), "1")  # type: ignore[misc]

    async def run(self, count: int) -> dict[str, int]:
        drains: list[asyncio.Task[int]] = []
        for index in range(count):
            if await self.push(index):
                drain = self.inbox.drain(self.tenant, self.conversation, self.handle, owner=self.name)
                drains.append(asyncio.create_task(drain))
            await asyncio.sleep(random.random() / 100)
        handled = await asyncio.gather(*drains)
        return {"drains": len(drains), "handled": sum(handled)}


async def main(url: str, tenant: str, conversation: str, name: str, count: int) -> None:
    redis = await redis_conn.connect(url, "unused")
    try:
        worker = OrderWorker(redis, tenant, conversation, name)
        print("ready", flush=True)
        await redis.blpop([worker.key("go")], timeout=30)  # type: ignore[misc]
        print(json.dumps(await worker.run(count)), flush=True)
    finally:
        await redis_conn.close(redis)


if __name__ == "__main__":
    url, tenant, conversation, name, count = sys.argv[1:]
    asyncio.run(main(url, tenant, conversation, name, int(count)))
