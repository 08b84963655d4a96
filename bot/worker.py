"""The work half of DESIGN section 2: drain a conversation's inbox in order and answer each message.

For each inbox item, under the inbox lease: parse it back to an :class:`InboundMessage`, run it through the
:class:`~bot.pipeline.Pipeline`, acknowledge a pressed button, and send the replies through the
:class:`~bot.sender.Sender`. A voice note's audio is fetched through its channel and transcribed inside the
pipeline (:mod:`bot.voice`).

Crash safety (the at-least-once window is spelled out in the README):

* A turn's outcome (session, ``last_event``, replies) is stored by one script (:mod:`bot.sessions`). A drain
  that dies before it redoes the turn; one that dies after it finds the turn answered and sends the stored
  replies not yet recorded as sent (each is recorded right after the provider accepts it).
* A dead worker's drains are picked up by any live worker within :data:`IN_PROGRESS_S` seconds: arq marks a
  running job with an in-progress key that, by default, lives for the job timeout + 10 s. Here it lives
  :data:`IN_PROGRESS_S` and every running job renews it (:func:`keeping_in_progress`), and the inbox lease is as short.
* A Redis outage never ends the worker: arq's poll loop errors are logged and retried with backoff, and a
  failed start is retried the same way (:func:`run_worker`).

Failures: a message whose handling raises stays at the inbox head and the drain is retried with backoff
(an arq ``Retry``, or a sleep in process), never sooner than a provider's ``retry_after``. The redriven head is
a no-op for the dialog (the session's ``last_event``) and resends only the replies not yet delivered. After
``dead_letter_after`` seconds of failures the message is moved to the tenant's dead-letter list (logged and
counted; ``bookingbot deadletters`` lists and retries them), so one poisonous message cannot block a
conversation forever and the drain job always reaches its marker release (see :mod:`bot.ingest`).

A drain also yields after ``budget_s`` seconds of work (the job re-runs at once), so a long backlog never
hits arq's job timeout.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from arq import Retry
from arq.connections import RedisSettings
from arq.constants import in_progress_key_prefix
from arq.worker import Worker, func
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from bot import keys, metrics, reminders
from bot.booking import calcom_webhooks
from bot.channelset import ChannelSet
from bot.exceptions import ChannelNotConfigured, ConfigError, DeliveryFailed, StorageError
from bot.ingest import (
    DRAIN_JOB,
    ArqQueue,
    Ingest,
    InProcess,
    Markers,
    Release,
    Scheduler,
    dumps_job,
    loads_job,
)
from bot.ops.heartbeat import HEARTBEAT_S
from bot.pipeline import Pipeline
from bot.retry import Backoff
from bot.runtime import Runtime
from bot.sender import Sender
from bot.settings import Settings
from bot.voice import MediaFetch
from bot.web.webchat import WebChat
from channels.base import InboundMessage
from dialogs.exceptions import Problem

log = logging.getLogger(__name__)

OWNER = f"{socket.gethostname()}:{os.getpid()}"
JOB_TIMEOUT_S = 300
IN_PROGRESS_S = 8  # a dead worker's job (and its inbox lease) is free again this long after its last heartbeat
# Failures are bounded per message (dead_letter_after, then dead letter) and a drain yields every budget_s, so
# the job itself must never run out of tries: that would strand its marker.
JOB_MAX_TRIES = 1_000_000
LOG_SETTLE_S = 2.0
LEASE_HELD_RETRY_S = 0.5  # a dead drainer's lease runs out within IN_PROGRESS_S: look again soon
DRAIN_RETRY = Backoff(base=1.0, cap=60.0, floor=1.0)  # a failed message's next try
Clock = Callable[[], datetime]  # the dialog's "now" (tests and replays freeze it)
_PERMANENT = (ConfigError, ChannelNotConfigured)  # retrying cannot help: dead-letter at once

# KEYS: the message's failure record (a hash); ARGV: now (s), TTL s. Returns {failures so far, first failure}.
_FAILED = """
redis.call('HSETNX', KEYS[1], 'since', ARGV[1])
local count = redis.call('HINCRBY', KEYS[1], 'count', 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {count, redis.call('HGET', KEYS[1], 'since')}
"""


class _Yield(Exception):
    """The drain used its time budget: leave the head for the job's next run."""


@dataclass
class _Run:
    tenant: str
    conversation: str
    deadline: float
    retry_in: float
    handled: int = 0


class Drainer:
    def __init__(
        self,
        runtime: Runtime,
        sender: Sender,
        markers: Markers,
        *,
        lease_ms: int = IN_PROGRESS_S * 1000,
        budget_s: float = 60.0,
        dead_letter_after: float = 600.0,
        retry: Backoff = DRAIN_RETRY,
        clock: Clock = lambda: datetime.now(UTC),
        media: MediaFetch | None = None,
    ) -> None:
        self.rt = runtime
        self.clock = clock
        self._pipeline = Pipeline(runtime, media)
        self.sender = sender
        self.markers = markers
        self._failed = runtime.redis.register_script(_FAILED)
        self.lease_ms = lease_ms
        self.budget_s = budget_s
        self.dead_letter_after = dead_letter_after
        self._retry = retry

    async def run(self, tenant: str, conversation: str, job_id: str) -> float | None:
        """Drain until the inbox is empty and the marker released: None. Otherwise the seconds after which
        the job must run again (a failed message, the time budget, another drainer holding the lease, Redis
        failing). Never raises (but for cancellation): a job that failed for good would strand its marker."""
        while True:
            state = _Run(tenant, conversation, time.monotonic() + self.budget_s, self._retry.floor)
            try:
                handler = functools.partial(self._handle, state)
                removed = await self.rt.inbox.drain(tenant, conversation, handler, OWNER, self.lease_ms)
                released = await self.markers.release(tenant, conversation, job_id)
            except _Yield:
                return 0.0
            except Exception as exc:
                log.warning("%s/%s: drain stopped: %r", tenant, conversation, exc)
                return state.retry_in
            if released is not Release.MORE:
                return None
            if removed == 0:  # the lease is someone else's (a live drainer, or a dead one's until it expires)
                return LEASE_HELD_RETRY_S

    async def run_to_end(self, tenant: str, conversation: str, job_id: str) -> None:
        """:meth:`run` with its retries, for drains inside the server process (embedded mode)."""
        delay = await self.run(tenant, conversation, job_id)
        while delay is not None:
            await asyncio.sleep(delay)
            delay = await self.run(tenant, conversation, job_id)

    async def _handle(self, state: _Run, item: str) -> None:
        if state.handled and time.monotonic() > state.deadline:
            raise _Yield  # never before the first item: every run makes progress
        state.handled += 1
        try:
            msg = InboundMessage.model_validate_json(item)
        except ValidationError as exc:
            await self._dead_letter(state.tenant, item, exc)
            return
        try:
            await self._process(msg)
        except _PERMANENT as exc:
            await self._dead_letter(state.tenant, item, exc)
        except Exception as exc:
            failures, since = await self._record_failure(msg)
            if time.time() - since >= self.dead_letter_after:
                await self._dead_letter(state.tenant, item, exc)
                return
            asked = exc.retry_after if isinstance(exc, DeliveryFailed) else None
            state.retry_in = max(self._retry.delay(failures - 1), asked or 0.0)
            raise

    async def _process(self, msg: InboundMessage) -> None:
        if msg.channel == calcom_webhooks.CHANNEL:  # a cal.com event, not a customer's message
            await calcom_webhooks.handle(self.rt, self.sender, msg)
            return
        started = time.perf_counter()
        turn = await self._pipeline.handle(msg, self.clock())
        if msg.callback_id is not None:
            await self.sender.ack(msg)
        await self.sender.deliver(turn.outbound)
        # The inbox forgets the message once this returns: its log rows are in this process's memory until
        # written. Waiting for them (briefly: an outage must not stall the chat) closes the window where a
        # kill would lose them; a redriven message logs its rows again in any case.
        with suppress(TimeoutError):
            async with asyncio.timeout(LOG_SETTLE_S):
                await self.rt.log.settled()
        conversation = msg.conversation
        await self.rt.redis.delete(
            keys.replies(msg.tenant, conversation, msg.event_id),
            keys.sent(msg.tenant, conversation, msg.event_id),
            keys.failures(msg.tenant, conversation, msg.event_id),
        )
        metrics.DRAINED.labels("duplicate" if turn.duplicate else "handled").inc()
        metrics.TURN_SECONDS.observe(time.perf_counter() - started)

    async def _record_failure(self, msg: InboundMessage) -> tuple[int, float]:
        """Count one more failure of ``msg``: (failures so far, when the first one happened, epoch s)."""
        key = keys.failures(msg.tenant, msg.conversation, msg.event_id)
        count, since = await self._failed(keys=[key], args=[time.time(), keys.TURN_TTL_S])
        return int(count), float(since)

    async def _dead_letter(self, tenant: str, item: str, exc: BaseException) -> None:
        log.error("%s: giving up on inbound message %s: %r", tenant, item[:200], exc)
        metrics.DRAINED.labels("dead_letter").inc()
        entry = json.dumps({"item": item, "error": repr(exc), "at": datetime.now(UTC).isoformat()})
        await self.rt.redis.rpush(keys.deadletter(tenant), entry)  # type: ignore[misc]


@dataclass
class Services:
    """Everything the server and the worker share, built on one :class:`Runtime`."""

    runtime: Runtime
    webchat: WebChat
    channels: ChannelSet
    drainer: Drainer
    ingest: Ingest

    @classmethod
    def build(cls, runtime: Runtime, *, in_process: bool, queue_name: str = keys.JOB_QUEUE, **drainer: Any) -> Services:
        """``drainer``: :class:`Drainer` options (``clock``, ``dead_letter_after``, ...)."""
        redis = runtime.redis
        webchat = WebChat(redis, ttl_s=runtime.settings.session_ttl_days * 86400)
        channels = ChannelSet(runtime.settings, webchat)
        drainer.setdefault("dead_letter_after", runtime.settings.dead_letter_after_minutes * 60)
        drains = Drainer(runtime, Sender(redis, channels.outlet), Markers(redis), media=channels.fetch_media, **drainer)
        scheduler: Scheduler = InProcess(drains.run_to_end) if in_process else ArqQueue(queue_name)
        if in_process:  # no worker: this process also delivers the CRM outbox
            runtime.start_relay()
        if not in_process:  # reminders: arq deferred jobs; in process, Reminders.loop (bot.web.server) fires them
            runtime.reminders.use_arq(queue_name)
        return cls(runtime, webchat, channels, drains, Ingest(redis, scheduler))

    async def idle(self) -> None:
        """Wait for the drains this process started (in process) to finish; nothing to wait for otherwise."""
        if isinstance(self.ingest.scheduler, InProcess):
            await self.ingest.scheduler.idle()

    async def aclose(self) -> None:
        if isinstance(self.ingest.scheduler, InProcess):
            await self.ingest.scheduler.aclose()
        await self.channels.aclose()


Job = Callable[..., Coroutine[Any, Any, Any]]


def keeping_in_progress(job: Job) -> Job:
    """Run an arq job while renewing its in-progress key every third of :data:`IN_PROGRESS_S`, so the key
    outlives the job only briefly when its worker dies (and any live worker then runs the job again)."""

    @functools.wraps(job)
    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        beating = asyncio.create_task(_renew(ctx["redis"], in_progress_key_prefix + ctx["job_id"]))
        try:
            return await job(ctx, *args, **kwargs)
        finally:
            beating.cancel()

    return run


async def _renew(redis: Any, key: str) -> None:
    while True:
        await asyncio.sleep(IN_PROGRESS_S / 3)
        try:
            await redis.pexpire(key, IN_PROGRESS_S * 1000)
        except (RedisError, OSError) as exc:  # the next beat tries again before the key runs out
            log.warning("%s: in-progress renewal failed: %r", key, exc)


async def drain(ctx: dict[str, Any], tenant: str, conversation: str) -> None:
    """The arq job: drain one conversation (scheduled by the ingest script, see :mod:`bot.ingest`)."""
    services: Services = ctx["services"]
    await services.drainer.markers.keep(tenant, conversation, ctx["job_id"])
    delay = await services.drainer.run(tenant, conversation, ctx["job_id"])
    if delay is not None:
        raise Retry(defer=delay)


class ResilientWorker(Worker):
    """arq's worker with a short in-progress key (renewed by :func:`keeping_in_progress`) and a poll loop that outlives
    Redis outages: an error is logged and the next poll waits with backoff instead of ending the process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_progress_timeout_s = IN_PROGRESS_S  # arq's default: the longest job timeout + 10 s
        self._outage = Backoff(base=0.2, cap=5.0, floor=0.1)
        self._failed_polls = 0

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            metrics.WORKER_POLL_ERRORS.inc()
            log.warning("worker poll failed (Redis unreachable?): %r", exc)
            await asyncio.sleep(self._outage.delay(self._failed_polls))
            self._failed_polls += 1
        else:
            self._failed_polls = 0


async def _startup(ctx: dict[str, Any]) -> None:
    runtime = await Runtime.start_when_reachable(ctx["settings"])
    ctx["services"] = Services.build(runtime, in_process=False, queue_name=ctx["queue_name"])
    runtime.start_relay()  # the CRM outbox (bot.crm.relay): a periodic task of every worker
    freeze_startup_objects()  # the runtime and tenants just built are as long-lived as the imports


async def _shutdown(ctx: dict[str, Any]) -> None:
    services: Services | None = ctx.get("services")
    if services is not None:
        await services.aclose()
        await services.runtime.aclose()


def worker_settings(settings: Settings, *, queue_name: str = keys.JOB_QUEUE) -> dict[str, Any]:
    """arq ``Worker`` keyword arguments for bookingbot's jobs: JSON jobs, no stored results."""
    if not settings.redis_url:
        problem = "the worker needs redis_url (REDIS_URL); without it `bookingbot serve` runs the jobs itself"
        raise ConfigError([Problem("<config>", 0, problem)])
    return {
        "functions": [
            func(keeping_in_progress(drain), name=DRAIN_JOB, max_tries=JOB_MAX_TRIES, timeout=JOB_TIMEOUT_S),
            func(reminders.remind, name=reminders.REMIND_JOB, max_tries=10, timeout=JOB_TIMEOUT_S),
        ],
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "queue_name": queue_name,
        "on_startup": _startup,
        "on_shutdown": _shutdown,
        "ctx": {"settings": settings, "queue_name": queue_name},
        "job_serializer": dumps_job,
        "job_deserializer": loads_job,
        "keep_result": 0,
        "health_check_interval": HEARTBEAT_S,  # see bot/ops/heartbeat.py
        "health_check_key": keys.worker_heartbeat(queue_name),
        "max_jobs": 100,
        "poll_delay": 0.02,  # arq polls its queue; its default 0.5 s put the reply p50 at ~360 ms (bench/webhooks.py)
    }


def make_worker(settings: Settings, *, queue_name: str = keys.JOB_QUEUE, **overrides: Any) -> Worker:
    """An arq worker for ``settings`` (``overrides``: other ``Worker`` arguments, e.g. ``burst=True``)."""
    return ResilientWorker(**(worker_settings(settings, queue_name=queue_name) | overrides))


def freeze_startup_objects() -> None:
    """Move everything loaded so far out of the garbage collector's sight. The imported libraries (aiogram's
    types above all) are ~200k long-lived objects: every full collection walked them, a ~100 ms pause that
    put the webhook p99 at ~70 ms instead of ~12 ms (measured at 5,000 acks/s, 50 connections)."""
    gc.collect()
    gc.freeze()


async def run_worker(settings: Settings) -> int:
    """``bookingbot worker``: the arq worker until SIGINT / SIGTERM. A start that fails because Redis or the
    database is unreachable is retried with backoff: the worker waits for them rather than exiting."""
    starts = Backoff(base=1.0, cap=30.0, floor=0.5)
    failures = 0
    while True:
        worker = make_worker(settings)
        try:
            await worker.async_run()
            return 0
        except asyncio.CancelledError:  # arq's signal handler cancels its main task: a clean stop
            return 0
        except (RedisError, OSError, StorageError, SQLAlchemyError) as exc:
            delay = starts.delay(failures)
            failures += 1
            log.error("storage unreachable (%r); the worker starts again in %.1f s", exc, delay)
        finally:
            await _close_quietly(worker)
        await asyncio.sleep(delay)


async def _close_quietly(worker: Worker) -> None:
    try:
        await worker.close()
    except (RedisError, OSError) as exc:
        log.warning("worker close: %r", exc)
