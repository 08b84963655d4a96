"""Outbound sends from the worker: rate limits, retries with backoff, and no reply sent twice.

* Rate limits are shared by every worker process through one Redis script (GCRA over several scopes, e.g.
  the chat and the bot): a send takes a slot when every scope allows it, else waits as long as the script
  says and asks again - nothing is dropped. Waiters on a shared scope queue in-process (one asks at a time).
* A send that fails transiently (:class:`RetryLater`: 429, 5xx, timeout) is retried with exponential
  backoff and full jitter (:class:`~bot.retry.Backoff`), never sooner than the provider's ``retry_after``;
  after ``attempts`` tries it is logged, counted and raised as :class:`DeliveryFailed` (carrying that
  ``retry_after``) so the drain job retries later.
* :class:`Unreachable` (the user blocked the bot) marks the conversation unreachable: nothing more is sent to
  it until the user writes again. :class:`PermanentSendError` is logged and counted, not retried.
* Each delivered reply is recorded under ``keys.sent`` (event id + reply index) right after the provider
  accepts it and before the next one is sent (a Redis outage at that moment is waited out), so a retried job
  resumes after the last delivered reply. A worker dying between the provider accepting a message and that
  record is the one window where a reply can repeat (VK alone is immune: its ``random_id``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot import keys, metrics
from bot.exceptions import DeliveryFailed
from bot.retry import Backoff
from channels.base import ChannelName, InboundMessage, OutboundMessage
from channels.exceptions import PermanentSendError, RetryLater, SendError, Unreachable
from channels.ratelimit import LIMITS, RateLimit

log = logging.getLogger(__name__)

UNREACHABLE_TTL_S = 180 * 86400


class Outlet(Protocol):
    """A channel as the sender sees it (an adapter, or the web chat outbox)."""

    async def send(self, msg: OutboundMessage) -> None: ...

    async def ack_button(self, msg: InboundMessage) -> None: ...


@dataclass(frozen=True)
class Limit:
    """``rate`` sends per second, of which ``burst`` may go back to back."""

    rate: float
    burst: int

    @property
    def interval_ms(self) -> int:
        return max(1, round(1000 / self.rate))

    @property
    def tolerance_ms(self) -> int:
        return (self.burst - 1) * self.interval_ms


def _limit(limit: RateLimit) -> Limit:
    """The provider's documented rate (channels.ratelimit) with a small burst: a reply of up to three messages
    goes out at once in a chat, and an account's burst is a third of its per-second count, so a burst plus
    the steady rate stays near the provider's figure."""
    burst = 3 if limit.scope == "chat" else max(1, limit.count // 3)
    return Limit(rate=limit.count / limit.per_seconds, burst=burst)


def limits_for(channel: ChannelName, chat: str) -> list[tuple[str, Limit]]:
    """The rate scopes a call to ``channel`` about ``chat`` counts against, as (scope name, limit)."""
    return [(f"chat:{chat}" if lim.scope == "chat" else "account", _limit(lim)) for lim in LIMITS[channel]]


# KEYS: one per scope, each holding its theoretical arrival time (TAT, ms). ARGV: interval_ms, tolerance_ms
# per key. Takes one send from every scope if all allow it now (returns {0, 0}); otherwise takes nothing and
# returns {ms until they would, index of the scope that waits longest}. Nothing is reserved ahead: a slow chat
# never holds up the account scope.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait, blocking = 0, 0
local tats = {}
for i, key in ipairs(KEYS) do
  local tat = math.max(tonumber(redis.call('GET', key) or now), now)
  tats[i] = tat
  local w = tat - tonumber(ARGV[2 * i]) - now
  if w > wait then wait, blocking = w, i end
end
if wait > 0 then return {wait, blocking} end
for i, key in ipairs(KEYS) do
  local next_tat = tats[i] + tonumber(ARGV[2 * i - 1])
  redis.call('SET', key, next_tat, 'PX', next_tat - now + 1000)
end
return {0, 0}
"""


class RateLimiter:
    """Waits for a send slot; nothing is dropped.

    Senders blocked by a scope shared across chats (the account) queue on one in-process lock per scope, so a
    single coroutine per process asks Redis while the rest wait their turn: without it every waiting job woke
    and asked at once (thousands of script calls a second to send 30 messages).
    """

    def __init__(self, redis: Redis) -> None:
        self._take = redis.register_script(_TAKE)
        self._queues: dict[str, asyncio.Lock] = {}

    async def try_take(self, tenant: str, channel: str, scopes: Sequence[tuple[str, Limit]]) -> float:
        """Take one send from every scope: 0 when taken, else the seconds to wait before trying again."""
        wait, _ = await self._try(tenant, channel, scopes)
        return wait

    async def take(self, tenant: str, channel: str, scopes: Sequence[tuple[str, Limit]]) -> float:
        """Wait until every scope allows one more send, and take it; returns the seconds it waited."""
        started = asyncio.get_running_loop().time()
        wait, blocking = await self._try(tenant, channel, scopes)
        while wait:
            if blocking is None:  # this chat's own limit: nobody else is waiting on it
                await asyncio.sleep(wait)
                wait, blocking = await self._try(tenant, channel, scopes)
                continue
            async with self._queues.setdefault(blocking, asyncio.Lock()):
                while wait and blocking is not None:
                    await asyncio.sleep(wait)
                    wait, blocking = await self._try(tenant, channel, scopes)
        return asyncio.get_running_loop().time() - started

    async def _try(
        self, tenant: str, channel: str, scopes: Sequence[tuple[str, Limit]]
    ) -> tuple[float, str | None]:
        """(seconds to wait, the shared scope key that blocks, or None when free or blocked by a chat scope)."""
        if not scopes:
            return 0.0, None
        names = [keys.rate(tenant, channel, scope) for scope, _ in scopes]
        args = [v for _, limit in scopes for v in (limit.interval_ms, limit.tolerance_ms)]
        wait_ms, index = await self._take(keys=names, args=args)
        shared = index and not scopes[int(index) - 1][0].startswith("chat:")
        return int(wait_ms) / 1000, names[int(index) - 1] if shared else None


SEND_RETRY = Backoff(base=0.5, cap=30.0, floor=0.25)
RECORD_SENT_FOR_S = 30.0
RECORD_RETRY = Backoff(base=0.1, cap=2.0, floor=0.05)


class Sender:
    def __init__(
        self,
        redis: Redis,
        channel_for: Callable[[str, str], Outlet],
        *,
        attempts: int = 5,
        retry: Backoff = SEND_RETRY,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,  # spends the retry backoffs
    ) -> None:
        self._redis = redis
        self._channel_for = channel_for
        self._limiter = RateLimiter(redis)
        self._attempts = attempts
        self._retry = retry
        self._sleep = sleep

    async def deliver(self, replies: Sequence[OutboundMessage]) -> None:
        """Send the replies to one inbound event in order, skipping those already delivered.

        Raises :class:`DeliveryFailed` when a reply still fails after every attempt (later ones are not sent,
        so the order holds when the job retries).
        """
        if not replies:
            return
        first = replies[0]
        conversation = f"{first.channel}:{first.user_id}"
        sent_key = keys.sent(first.tenant, conversation, first.event_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.unreachable(first.tenant, conversation))
            pipe.smembers(sent_key)
            blocked, done = await pipe.execute()
        if blocked:
            metrics.SENDS.labels(first.channel, "unreachable").inc(len(replies))
            return
        for reply in replies:
            if str(reply.index) in done:
                continue
            if not await self._send(reply):
                await self._mark_unreachable(reply, conversation)
                return
            await self._record_sent(sent_key, reply.index)

    async def _record_sent(self, sent_key: str, index: int) -> None:
        """Record a delivered reply. The provider has it, so a Redis blip here must not turn into a resend:
        keep trying for :data:`RECORD_SENT_FOR_S` before giving up (the one window that resends it)."""
        deadline = time.monotonic() + RECORD_SENT_FOR_S
        for attempt in itertools.count():
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.sadd(sent_key, str(index))
                    pipe.expire(sent_key, keys.TURN_TTL_S)
                    await pipe.execute()
                return
            except (RedisError, OSError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(RECORD_RETRY.delay(attempt))

    async def ack(self, msg: InboundMessage) -> None:
        """Acknowledge a pressed button (see ``Channel.ack_button``). Counted against the account's rate; a
        failure is logged, never retried: the reply that follows matters more than the spinner."""
        scopes = [s for s in limits_for(msg.channel, msg.chat_id or msg.user_id) if s[0] == "account"]
        await self._limiter.take(msg.tenant, msg.channel, scopes)
        try:
            await self._channel_for(msg.tenant, msg.channel).ack_button(msg)
        except SendError as exc:
            log.warning("%s/%s: button press not acknowledged on %s: %s", msg.tenant, msg.user_id, msg.channel, exc)
            metrics.SENDS.labels(msg.channel, "ack_failed").inc()

    async def _send(self, reply: OutboundMessage) -> bool:
        """One reply through the rate limits and retries; False when the user is unreachable."""
        channel = self._channel_for(reply.tenant, reply.channel)
        for attempt in range(self._attempts):
            try:
                return await self._attempt(channel, reply)
            except RetryLater as exc:
                failure = exc
                if attempt + 1 < self._attempts:
                    metrics.SEND_RETRIES.labels(reply.channel).inc()
                    await self._sleep(max(exc.retry_after or 0.0, self._retry.delay(attempt)))
        log.error(
            "%s/%s reply %s to %s failed after %d attempts: %s",
            reply.tenant,
            reply.user_id,
            reply.index,
            reply.channel,
            self._attempts,
            failure,
        )
        metrics.SENDS.labels(reply.channel, "failed").inc()
        raise DeliveryFailed(
            f"{reply.channel} send failed after {self._attempts} attempts: {failure}", retry_after=failure.retry_after
        ) from failure

    async def _attempt(self, channel: Outlet, reply: OutboundMessage) -> bool:
        scopes = limits_for(reply.channel, reply.chat_id or reply.user_id)
        waited = await self._limiter.take(reply.tenant, reply.channel, scopes)
        if waited:
            metrics.RATE_WAIT_SECONDS.labels(reply.channel).inc(waited)
        try:
            await channel.send(reply)
        except Unreachable:
            return False
        except PermanentSendError as exc:
            log.error(
                "%s/%s reply %s refused by %s: %s",
                reply.tenant,
                reply.user_id,
                reply.index,
                reply.channel,
                exc,
            )
            metrics.SENDS.labels(reply.channel, "refused").inc()
            return True
        metrics.SENDS.labels(reply.channel, "sent").inc()
        return True

    async def _mark_unreachable(self, reply: OutboundMessage, conversation: str) -> None:
        log.warning(
            "%s/%s is unreachable on %s: not sending until they write again",
            reply.tenant,
            reply.user_id,
            reply.channel,
        )
        metrics.SENDS.labels(reply.channel, "unreachable").inc()
        await self._redis.set(keys.unreachable(reply.tenant, conversation), "1", ex=UNREACHABLE_TTL_S)
