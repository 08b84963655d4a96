"""The webhook fast path (DESIGN section 2): dedupe -> append to inbox -> ensure one drain job, one script.

Every inbound message costs one Redis round trip: :data:`_ACCEPT` marks the provider's event id as seen
(``SET NX EX``; a redelivery stops there), appends the message to the conversation's inbox (``RPUSH``), and
sets the conversation's ``scheduled`` marker (``SET NX``, value: a fresh job id). Only when that marker was
absent does it schedule a drain: with :class:`ArqQueue` it writes arq's job key and adds the id to arq's queue
exactly as ``ArqRedis.enqueue_job`` does (same keys, JSON job body, score = enqueue time in ms, expiry =
arq's default); with :class:`InProcess` it records the conversation in the tenant's ``ready`` set and the
server starts an asyncio task for it.

Exactly one drain job per conversation, and never a stranded message
-------------------------------------------------------------------
The marker exists exactly while a job is responsible for the conversation. It is created only together with a
job (same script), and deleted only by :meth:`Markers.release`, a script its job runs after a drain and that
deletes the marker *only if the inbox is empty*. Both scripts are atomic, so any push is ordered either

* before the release: the release sees the item (inbox not empty), keeps the marker, and the job drains again;
* or after it: the push finds no marker, so it creates one and schedules a new job.

Either way the item has a job, and no push schedules a second job while the marker stands. The job always
reaches its release: :class:`bot.worker.Drainer` turns every failure into a retry of the same job, and gives up
on a message (dead letter) rather than on the job. The marker carries
its job's id, so a stale job (e.g. one redriven after its marker expired and a new job was scheduled) sees
that it is not the owner and stops instead of releasing someone else's marker; a job that finds the marker
gone (expired) adopts it. The marker expires with arq's job key: both are set by the same script and every
run of the job pushes both expiries forward together (:meth:`Markers.keep`), so a job lost with its key (a
worker outage longer than a day) frees the conversation for the next message. A job whose worker died is run
again by any live worker within seconds (see :mod:`bot.worker`). The lease of :class:`bot.inbox.Inbox`
separately guarantees that only one drainer touches the inbox at a time.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from arq.constants import expires_extra_ms
from arq.jobs import serialize_job
from redis.asyncio import Redis

from bot import keys
from channels.base import InboundMessage

log = logging.getLogger(__name__)

DRAIN_JOB = "drain"  # the arq function name of a conversation's drain (bot.worker.drain)
DEDUPE_TTL_S = 7 * 86400  # WhatsApp redelivers for up to 7 days; Telegram and VK for much less
MARKER_TTL_MS = expires_extra_ms  # as long as arq keeps an unstarted job


def dumps_job(data: dict[str, Any]) -> bytes:
    """arq job serializer: JSON, never pickle."""
    return json.dumps(data, separators=(",", ":")).encode()


def loads_job(raw: bytes) -> dict[str, Any]:
    """arq job deserializer, the inverse of :func:`dumps_job`."""
    data: dict[str, Any] = json.loads(raw)
    return data


# KEYS: 1 dedupe, 2 inbox, 3 scheduled marker, 4 arq job key | ready set, 5 arq queue (unused in process),
# 6 unreachable mark (a user who writes again can be answered again)
# ARGV: 1 dedupe ttl s (0: no dedupe, a redrive), 2 item, 3 marker/job ttl ms, 4 mode, 5 job id, 6 job body,
# 7 score ms, 8 conversation
# Returns 0 duplicate, 1 appended (a drain is already scheduled), 2 appended and a drain scheduled.
_ACCEPT = """
if ARGV[1] ~= '0' and not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[6])
if not redis.call('SET', KEYS[3], ARGV[5], 'NX', 'PX', ARGV[3]) then return 1 end
if ARGV[4] == 'arq' then
  redis.call('PSETEX', KEYS[4], ARGV[3], ARGV[6])
  redis.call('ZADD', KEYS[5], ARGV[7], ARGV[5])
else
  redis.call('SADD', KEYS[4], ARGV[8])
end
return 2
"""

# KEYS: 1 inbox, 2 scheduled marker, 3 ready set; ARGV: 1 job id, 2 marker ttl ms, 3 conversation.
# Returns 1 released (inbox empty), 0 more to drain (marker kept, or adopted if it had expired),
# -1 another job owns the marker.
_RELEASE = """
local owner = redis.call('GET', KEYS[2])
if owner ~= ARGV[1] then
  if owner then return -1 end
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
end
if redis.call('LLEN', KEYS[1]) > 0 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[3])
return 1
"""


class Accepted(enum.IntEnum):
    DUPLICATE = 0
    QUEUED = 1  # a drain was already scheduled and will reach the message
    SCHEDULED = 2  # the message started a new drain


class Release(enum.IntEnum):
    OTHER_OWNER = -1
    MORE = 0
    DONE = 1


class Scheduler(Protocol):
    """How a drain gets scheduled: the ingest script's branch (``mode``), and what follows in Python."""

    mode: str

    def schedule_keys(self, tenant: str, job_id: str) -> tuple[str, str]:
        """KEYS[4] and KEYS[5] of the ingest script."""
        ...

    def started(self, tenant: str, conversation: str, job_id: str) -> None:
        """The script scheduled a drain for the conversation under ``job_id``."""
        ...


class ArqQueue:
    """Drains run as arq jobs on ``bookingbot worker`` processes (the script enqueues them)."""

    mode = "arq"

    def __init__(self, queue_name: str = keys.JOB_QUEUE) -> None:
        self.queue_name = queue_name

    def schedule_keys(self, tenant: str, job_id: str) -> tuple[str, str]:
        return keys.job(job_id), self.queue_name

    def started(self, tenant: str, conversation: str, job_id: str) -> None:
        """Nothing to do: the job is in arq's queue already."""


Runner = Callable[[str, str, str], Coroutine[Any, Any, None]]


class InProcess:
    """Drains run as asyncio tasks of this process (embedded mode: no worker).

    The tenant's ``ready`` set remembers scheduled conversations, so :meth:`recover` restarts the drains a
    stopped process left behind.
    """

    mode = "local"

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule_keys(self, tenant: str, job_id: str) -> tuple[str, str]:
        return keys.ready(tenant), keys.JOB_QUEUE

    def started(self, tenant: str, conversation: str, job_id: str) -> None:
        task = asyncio.create_task(self._runner(tenant, conversation, job_id))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    async def recover(self, redis: Redis, tenants: list[str]) -> int:
        """Start a drain for every conversation left scheduled; returns how many."""
        count = 0
        for tenant in tenants:
            for conversation in await redis.smembers(keys.ready(tenant)):  # type: ignore[misc]
                job_id = await redis.get(keys.scheduled(tenant, conversation)) or _job_id()
                self.started(tenant, conversation, job_id)
                count += 1
        return count

    async def idle(self) -> None:
        """Wait until every drain started so far (and any they led to) has finished."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("in-process drain crashed", exc_info=task.exception())


def _job_id() -> str:
    """A fresh arq job id: unique, not secret, so the process's PRNG (seeded by the OS) rather than a getrandom()
    system call per webhook, which was 5% of the fast path's CPU."""
    return f"{random.getrandbits(128):032x}"


class Ingest:
    def __init__(self, redis: Redis, scheduler: Scheduler, *, dedupe_ttl_s: int = DEDUPE_TTL_S) -> None:
        self.scheduler = scheduler
        self._accept = redis.register_script(_ACCEPT)
        self._dedupe_ttl_s = dedupe_ttl_s

    async def accept(self, msg: InboundMessage, *, redrive: bool = False) -> Accepted:
        """Dedupe, append and (if needed) schedule the message's conversation: one round trip. ``redrive``:
        skip the dedupe (an operator sends a dead-lettered message through again)."""
        conversation = msg.conversation
        job_id = _job_id()
        now_ms = int(time.time() * 1000)
        job = serialize_job(DRAIN_JOB, (msg.tenant, conversation), {}, None, now_ms, serializer=dumps_job)
        schedule_key, queue = self.scheduler.schedule_keys(msg.tenant, job_id)
        status = await self._accept(
            keys=[
                keys.dedupe(msg.tenant, msg.channel, msg.event_id),
                keys.inbox(msg.tenant, conversation),
                keys.scheduled(msg.tenant, conversation),
                schedule_key,
                queue,
                keys.unreachable(msg.tenant, conversation),
            ],
            args=[
                0 if redrive else self._dedupe_ttl_s,
                msg.model_dump_json(),
                MARKER_TTL_MS,
                self.scheduler.mode,
                job_id,
                job,
                now_ms,
                conversation,
            ],
        )
        accepted = Accepted(int(status))
        if accepted is Accepted.SCHEDULED:
            self.scheduler.started(msg.tenant, conversation, job_id)
        return accepted


# KEYS: 1 scheduled marker, 2 arq job key; ARGV: 1 job id, 2 ttl ms. The marker (while it is this job's) and
# the job key expire together, a full TTL from now.
_KEEP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
"""


class Markers:
    """The drain side of the marker protocol (see the module docstring)."""

    def __init__(self, redis: Redis) -> None:
        self._release = redis.register_script(_RELEASE)
        self._keep = redis.register_script(_KEEP)

    async def keep(self, tenant: str, conversation: str, job_id: str) -> None:
        """At the start of each run of an arq drain job: its marker can never outlive its job key."""
        await self._keep(keys=[keys.scheduled(tenant, conversation), keys.job(job_id)], args=[job_id, MARKER_TTL_MS])

    async def release(self, tenant: str, conversation: str, job_id: str) -> Release:
        """After a drain, give up the conversation's marker if its inbox is empty."""
        status = await self._release(
            keys=[keys.inbox(tenant, conversation), keys.scheduled(tenant, conversation), keys.ready(tenant)],
            args=[job_id, MARKER_TTL_MS, conversation],
        )
        return Release(int(status))
