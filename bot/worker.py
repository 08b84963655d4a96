"""The work half of DESIGN section 2: drain a conversation's inbox in order and answer each message.

For each inbox item, under the inbox lease: parse it back to an :class:`InboundMessage`, run it through the
:class:`~bot.pipeline.Pipeline`, acknowledge a pressed button, and send the replies through the
:class:`~bot.sender.Sender`. A voice note reaches the engine as an empty text until speech-to-text is
configured (its issue plugs in before the pipeline), so the dialog asks again in words.

Failures: a message whose handling raises stays at the inbox head and the drain is retried with backoff
(an arq ``Retry``, or a sleep in process). The redriven head is a no-op for the dialog (the session's
``last_event``) and resends only the replies not yet delivered: they were stored under ``keys.replies`` before
the first send, and each delivery is recorded under ``keys.sent``. After ``max_failures`` failures the message
is moved to the tenant's dead-letter list (logged and counted), so one poisonous message cannot block a
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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from arq import Retry
from arq.connections import RedisSettings
from arq.worker import Worker, func
from pydantic import TypeAdapter, ValidationError

from bot import keys, metrics
from bot.channelset import ChannelSet
from bot.exceptions import ChannelNotConfigured, ConfigError
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
from bot.pipeline import Pipeline
from bot.runtime import Runtime
from bot.sender import SENT_TTL_S, Sender, backoff
from bot.settings import Settings
from bot.webchat import WebChat
from channels.base import InboundMessage, OutboundMessage
from dialogs.exceptions import Problem

log = logging.getLogger(__name__)

OWNER = f"{socket.gethostname()}:{os.getpid()}"
JOB_TIMEOUT_S = 300
# Failures are bounded per message (max_failures, then dead letter) and a drain yields every budget_s, so the
# job itself must never run out of tries: that would strand its marker.
JOB_MAX_TRIES = 1_000_000
_REPLIES = TypeAdapter(list[OutboundMessage])
Clock = Callable[[], datetime]  # the dialog's "now" (tests and replays freeze it)
_PERMANENT = (ConfigError, ChannelNotConfigured)  # retrying cannot help: dead-letter at once


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
        lease_ms: int = 30_000,
        budget_s: float = 60.0,
        max_failures: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self.rt = runtime
        self.clock = clock
        self._pipeline = Pipeline(runtime)
        self._sender = sender
        self._markers = markers
        self.lease_ms = lease_ms
        self.budget_s = budget_s
        self.max_failures = max_failures
        self._base_delay = base_delay
        self._max_delay = max_delay

    async def run(self, tenant: str, conversation: str, job_id: str) -> float | None:
        """Drain until the inbox is empty and the marker released: None. Otherwise the seconds after which
        the job must run again (a failed message, the time budget, another drainer holding the lease, Redis
        failing). Never raises (but for cancellation): a job that failed for good would strand its marker."""
        while True:
            state = _Run(tenant, conversation, time.monotonic() + self.budget_s, self._base_delay)
            try:
                handler = functools.partial(self._handle, state)
                removed = await self.rt.inbox.drain(tenant, conversation, handler, OWNER, self.lease_ms)
                released = await self._markers.release(tenant, conversation, job_id)
            except _Yield:
                return 0.0
            except Exception as exc:
                log.warning("%s/%s: drain stopped: %r", tenant, conversation, exc)
                return state.retry_in
            if released is not Release.MORE:
                return None
            if removed == 0:  # the lease is someone else's (a live drainer, or a dead one's until it expires)
                return self.lease_ms / 2000

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
            failures = await self._count_failure(msg)
            if failures >= self.max_failures:
                await self._dead_letter(state.tenant, item, exc)
                return
            state.retry_in = backoff(failures, self._base_delay, self._max_delay) + self._base_delay
            raise

    async def _process(self, msg: InboundMessage) -> None:
        started = time.perf_counter()
        turn = await self._pipeline.handle(msg, self.clock())
        replies = await self._replies(msg, turn.outbound(msg), turn.duplicate)
        if msg.callback_id is not None:
            await self._sender.ack(msg)
        await self._sender.deliver(replies)
        conversation = msg.conversation
        await self.rt.redis.delete(
            keys.replies(msg.tenant, conversation, msg.event_id),
            keys.sent(msg.tenant, conversation, msg.event_id),
            keys.failures(msg.tenant, conversation, msg.event_id),
        )
        metrics.DRAINED.labels("duplicate" if turn.duplicate else "handled").inc()
        metrics.TURN_SECONDS.observe(time.perf_counter() - started)

    async def _replies(
        self, msg: InboundMessage, fresh: list[OutboundMessage], duplicate: bool
    ) -> list[OutboundMessage]:
        """The replies to send: a fresh turn's (stored first), or those a redriven message stored before."""
        key = keys.replies(msg.tenant, msg.conversation, msg.event_id)
        if duplicate:
            stored = await self.rt.redis.get(key)
            return [] if stored is None else _REPLIES.validate_json(stored)
        if fresh:
            await self.rt.redis.set(key, _REPLIES.dump_json(fresh), ex=SENT_TTL_S)
        return fresh

    async def _count_failure(self, msg: InboundMessage) -> int:
        key = keys.failures(msg.tenant, msg.conversation, msg.event_id)
        async with self.rt.redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, SENT_TTL_S)
            count, _ = await pipe.execute()
        return int(count)

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
        """``drainer``: :class:`Drainer` options (``clock``, ``max_failures``, ...)."""
        redis = runtime.redis
        webchat = WebChat(redis, ttl_s=runtime.settings.session_ttl_days * 86400)
        channels = ChannelSet(runtime.settings, webchat)
        drains = Drainer(runtime, Sender(redis, channels.outlet), Markers(redis), **drainer)
        scheduler: Scheduler = InProcess(drains.run_to_end) if in_process else ArqQueue(queue_name)
        if in_process:  # no worker: this process also delivers the CRM outbox
            runtime.start_relay()
        return cls(runtime, webchat, channels, drains, Ingest(redis, scheduler))

    async def aclose(self) -> None:
        if isinstance(self.ingest.scheduler, InProcess):
            await self.ingest.scheduler.aclose()
        await self.channels.aclose()


async def drain(ctx: dict[str, Any], tenant: str, conversation: str) -> None:
    """The arq job: drain one conversation (scheduled by the ingest script, see :mod:`bot.ingest`)."""
    services: Services = ctx["services"]
    delay = await services.drainer.run(tenant, conversation, ctx["job_id"])
    if delay is not None:
        raise Retry(defer=delay)


async def _startup(ctx: dict[str, Any]) -> None:
    runtime = await Runtime.start(ctx["settings"])
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
        "functions": [func(drain, name=DRAIN_JOB, max_tries=JOB_MAX_TRIES, timeout=JOB_TIMEOUT_S)],
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "queue_name": queue_name,
        "on_startup": _startup,
        "on_shutdown": _shutdown,
        "ctx": {"settings": settings, "queue_name": queue_name},
        "job_serializer": dumps_job,
        "job_deserializer": loads_job,
        "keep_result": 0,
        "max_jobs": 100,
        "poll_delay": 0.02,  # arq polls its queue; its default 0.5 s put the reply p50 at ~360 ms (bench/webhooks.py)
    }


def make_worker(settings: Settings, *, queue_name: str = keys.JOB_QUEUE, **overrides: Any) -> Worker:
    """An arq worker for ``settings`` (``overrides``: other ``Worker`` arguments, e.g. ``burst=True``)."""
    return Worker(**(worker_settings(settings, queue_name=queue_name) | overrides))


def freeze_startup_objects() -> None:
    """Move everything loaded so far out of the garbage collector's sight. The imported libraries (aiogram's
    types above all) are ~200k long-lived objects: every full collection walked them, a ~100 ms pause that
    put the webhook p99 at ~70 ms instead of ~12 ms (measured at 5,000 acks/s, 50 connections)."""
    gc.collect()
    gc.freeze()


async def run_worker(settings: Settings) -> int:
    """``bookingbot worker``: the arq worker until SIGINT / SIGTERM."""
    worker = make_worker(settings)
    try:
        await worker.async_run()
    except asyncio.CancelledError:  # arq's signal handler cancels its main task: a clean stop
        pass
    finally:
        await worker.close()
    return 0
