"""``bookingbot worker --check``: is a worker alive? For a container health check.

The worker's poll loop refreshes :func:`bot.keys.worker_heartbeat` every :data:`HEARTBEAT_S` seconds with a
slightly longer expiry (arq's health check) and deletes it on a clean stop, so the key exists exactly while
some worker is polling the queue.
"""

from __future__ import annotations

import sys

from bot import keys
from bot.settings import Settings

HEARTBEAT_S = 10


async def check(settings: Settings, *, queue_name: str = keys.JOB_QUEUE) -> int:
    """0 and the worker's last report when the heartbeat is fresh, else 1 and why."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    if not settings.redis_url:
        print("no redis_url (REDIS_URL): there is no separate worker to check", file=sys.stderr)
        return 1
    client = Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=3)
    try:
        beat = await client.get(keys.worker_heartbeat(queue_name))
    except RedisError as exc:
        print(f"Redis unreachable: {exc}", file=sys.stderr)
        return 1
    finally:
        await client.aclose()
    if beat is None:
        print(f"no worker heartbeat in the last {HEARTBEAT_S + 1} s", file=sys.stderr)
        return 1
    print(f"worker alive: {beat}")
    return 0
