"""One of the two processes of the order test in ``tests/test_inbox.py`` (not a test module itself).

    python tests/_order_worker.py REDIS_URL TENANT CONVERSATION NAME COUNT

Prints ``ready``, waits for the test's go signal, then sends COUNT messages through the production ingest path
(:class:`bot.ingest.Ingest`: dedupe + append + "ensure one drain" in one script), with random pauses. A drain
this process is given runs as it does in embedded mode: :meth:`bot.inbox.Inbox.drain` under the lease, then
:meth:`bot.ingest.Markers.release`, again while more arrived. Each message is sent under a cross-process mutex
together with an INCR, so its ``seq`` is its place in the arrival order. The handler appends each message to
the ``processed`` list and flags any overlap with another running handler.
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
from bot.ingest import Accepted, Ingest, InProcess, Markers, Release
from channels.base import InboundMessage


class OrderWorker:
    def __init__(self, redis: Redis, tenant: str, conversation: str, name: str) -> None:
        self.redis, self.tenant, self.conversation, self.name = redis, tenant, conversation, name
        self.inbox = Inbox(redis)
        self.markers = Markers(redis)
        self.scheduler = InProcess(self.drain)
        self.ingest = Ingest(redis, self.scheduler)
        self.drains = self.handled = 0

    def key(self, name: str) -> str:
        return keys.scratch(self.tenant, name)

    async def handle(self, item: str) -> None:
        if not await self.redis.set(self.key("busy"), self.name, nx=True, px=10_000):
            await self.redis.rpush(self.key("overlaps"), f"{self.name} {item}")  # type: ignore[misc]
        await self.redis.rpush(self.key("processed"), InboundMessage.model_validate_json(item).text)  # type: ignore[misc]
        await asyncio.sleep(random.random() / 1000)
        await self.redis.delete(self.key("busy"))

    async def drain(self, tenant: str, conversation: str, job_id: str) -> None:
        self.drains += 1
        while True:
            self.handled += await self.inbox.drain(tenant, conversation, self.handle, owner=self.name)
            if await self.markers.release(tenant, conversation, job_id) is not Release.MORE:
                return

    async def send(self, index: int) -> Accepted:
        # The mutex binds the INCR to this message: no other message can be accepted between them.
        await self.redis.blpop([self.key("mutex")], timeout=10)  # type: ignore[misc]
        try:
            seq = await self.redis.incr(self.key("seq"))
            text = json.dumps({"seq": seq, "by": self.name, "index": index})
            user = self.conversation.partition(":")[2]
            msg = InboundMessage(tenant=self.tenant, channel="telegram", user_id=user,
                                 event_id=f"{self.name}-{index}", text=text)  # fmt: skip
            return await self.ingest.accept(msg)
        finally:
            await self.redis.rpush(self.key("mutex"), "1")  # type: ignore[misc]

    async def run(self, count: int) -> dict[str, int]:
        for index in range(count):
            if await self.send(index) is Accepted.DUPLICATE:
                raise AssertionError(f"{self.name}-{index} was taken for a redelivery")
            await asyncio.sleep(random.random() / 100)
        await self.scheduler.idle()
        return {"drains": self.drains, "handled": self.handled}


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
