"""Per-conversation inbox: a FIFO of inbound messages, drained in order by one holder of a lease at a time.

Order holds across any number of processes because every step is one Redis command or one Lua script:

- Items are appended (``RPUSH``) by :mod:`bot.ingest`'s script, together with the dedupe and the "one drain
  job per conversation" marker; this module is the drain side only.
- ``drain`` takes the lease (``SET NX PX``), runs the handler on the head, and then in one script removes the
  head (only while it still owns the lease), renews the lease and returns the next head, or releases the lease
  when the inbox is empty. A background task renews the lease while a long handler runs. A drain of n items
  costs n + 1 round trips.

Delivery is at least once; the handler must be idempotent per item (the pipeline skips an event id it already
processed, and its session version check rejects a second save):

- A handler that raises leaves its item at the head; the lease is released and the exception propagates.
  The caller must retry the drain (an arq job: raise ``Retry``), otherwise the item waits for the next push.
- A drainer that dies keeps the lease until it expires (``lease_ms``); the next drain reprocesses the head.
  The dead drainer's job must be redriven after that: arq re-runs the job of a dead worker once its
  in-progress key expires (job timeout + 10 s), so ``lease_ms`` must stay below the job timeout.
- A drainer that loses its lease mid-handler (renewals failed for ``lease_ms``) cannot remove the head: it
  stops and the new holder redrives that item.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from uuid import uuid4

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot import keys

log = logging.getLogger(__name__)

# KEYS: inbox, lease; ARGV: token, lease ms. The head if the lease was taken; nil if held or nothing to do.
_ACQUIRE = """
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local head = redis.call('LINDEX', KEYS[1], 0)
if not head then redis.call('DEL', KEYS[2]) end
return head
"""

# KEYS: inbox, lease; ARGV: token, handled item, lease ms. nil: lease lost (nothing touched);
# {}: item removed, inbox empty, lease released; {head}: item removed, lease renewed, next item.
_ACK = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return false end
if redis.call('LINDEX', KEYS[1], 0) == ARGV[2] then redis.call('LPOP', KEYS[1]) end
local head = redis.call('LINDEX', KEYS[1], 0)
if not head then
  redis.call('DEL', KEYS[2])
  return {}
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {head}
"""

# KEYS: lease; ARGV: token, lease ms. 1 if still ours and extended.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: lease; ARGV: token.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

Handler = Callable[[str], Awaitable[None]]


class Inbox:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._acquire = redis.register_script(_ACQUIRE)
        self._ack = redis.register_script(_ACK)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def drain(
        self, tenant: str, conversation: str, handler: Handler, owner: str, lease_ms: int = 30_000
    ) -> int:
        """Handle the conversation's items in order until the inbox is empty; returns how many were removed.

        Returns 0 at once when another drainer holds the lease. ``owner`` names the drainer in the lease value
        (a random suffix keeps every call's lease its own).
        """
        if lease_ms <= 0:
            raise ValueError(f"lease_ms must be positive, got {lease_ms}")
        inbox, lease = keys.inbox(tenant, conversation), keys.lease(tenant, conversation)
        token = f"{owner}:{uuid4().hex}"
        head: str | None = await self._acquire(keys=[inbox, lease], args=[token, lease_ms])
        if head is None:
            return 0
        removed = 0
        renewer = asyncio.create_task(self._keep_alive(lease, token, lease_ms))
        try:
            while head is not None:
                await handler(head)
                step: list[str] | None = await self._ack(keys=[inbox, lease], args=[token, head, lease_ms])
                if step is None:
                    log.warning("%s: lease lost while handling an item; its new holder redrives it", lease)
                    break
                removed += 1
                head = step[0] if step else None
        except BaseException:
            await self._release(keys=[lease], args=[token])
            raise
        finally:
            renewer.cancel()
        return removed

    async def pending(self, tenant: str, conversation: str) -> int:
        """Items waiting, including the one being handled (it is removed only after its handler returns)."""
        waiting: int = await self._redis.llen(keys.inbox(tenant, conversation))  # type: ignore[misc]
        return waiting

    async def _keep_alive(self, lease: str, token: str, lease_ms: int) -> None:
        """Renew the lease every third of its life while the drain runs; stop once it is no longer ours."""
        while True:
            await asyncio.sleep(lease_ms / 3000)
            try:
                if not await self._renew(keys=[lease], args=[token, lease_ms]):
                    return
            except RedisError as exc:  # a blip: the next tick tries again before the lease runs out
                log.warning("%s: lease renewal failed: %s", lease, exc)
