"""``bookingbot poll``: a tenant's bots by long polling, for a laptop with no public HTTPS URL.

Telegram ``getUpdates`` (the webhook is deleted first: the Bot API serves one or the other) and VK Bots Long
Poll. Every message goes through the same :meth:`bot.ingest.Ingest.accept` as a webhook's, so dedupe, the
per-conversation inbox and the drains (in this process without ``redis_url``, else ``bookingbot worker``)
are the production ones. An update is confirmed to the provider only after it was accepted.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from bot import metrics
from bot.ingest import Accepted, InProcess
from bot.runtime import Runtime
from bot.settings import Settings
from bot.worker import Services
from channels.base import InboundMessage, Pollable
from channels.exceptions import RetryLater, SendError

log = logging.getLogger(__name__)

WAIT_S = 25  # each long poll's wait; providers answer earlier as soon as there is an update
MAX_BACKOFF_S = 30.0


class PollFailed(Exception):
    """A provider refused the poll itself (a wrong token, another process polling the same bot)."""


async def poll(settings: Settings, tenant: str, *, in_process: bool | None = None, wait_s: int = WAIT_S) -> int:
    """Poll every pollable channel of ``tenant`` until cancelled; 1 when a provider refuses, 2 when there is
    nothing to poll."""
    if tenant not in settings.tenants:
        print(f"unknown tenant {tenant!r} (configured: {', '.join(settings.tenants)})", file=sys.stderr)
        return 2
    from bot.web.server import drains_in_process

    run_in_process = drains_in_process(settings, in_process)
    services = Services.build(await Runtime.start(settings), in_process=run_in_process)
    try:
        pollers: dict[str, Pollable] = {
            name: a for name, a in services.channels.of(tenant).items() if isinstance(a, Pollable)
        }
        for name in services.channels.of(tenant).keys() - pollers.keys():
            print(f"{tenant} {name}: has no polling mode; it needs `bookingbot serve` and `set-webhooks`")
        if not pollers:
            print(f"tenant {tenant!r} has no telegram or vk channel to poll", file=sys.stderr)
            return 2
        await _recover(services)
        return await _run(services, tenant, pollers, wait_s, run_in_process)
    finally:
        await services.aclose()
        await services.runtime.aclose()


async def _recover(services: Services) -> None:
    scheduler = services.ingest.scheduler
    if isinstance(scheduler, InProcess):
        await scheduler.recover(services.runtime.redis, list(services.runtime.tenants))


async def _run(services: Services, tenant: str, pollers: dict[str, Pollable], wait_s: int, local: bool) -> int:
    for name, adapter in pollers.items():
        try:
            await adapter.delete_webhook()
        except SendError as exc:
            print(f"{tenant} {name}: FAILED to switch to polling: {exc}", file=sys.stderr)
            return 1
        what = "deleted the webhook (`bookingbot set-webhooks` sets it again)" if name == "telegram" else (
            "turned Bots Long Poll on"
        )
        print(f"{tenant} {name}: {what}", flush=True)
    drains = "drains in this process" if local else "drains by `bookingbot worker`"
    print(f"polling {', '.join(pollers)} for tenant {tenant} ({drains}); Ctrl-C stops", flush=True)
    loops = [_loop(tenant, name, adapter, services.ingest.accept, wait_s) for name, adapter in pollers.items()]
    try:
        await asyncio.gather(*loops)
    except PollFailed as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


Accept = Callable[[InboundMessage], Awaitable[Accepted]]


async def _loop(tenant: str, name: str, adapter: Pollable, accept: Accept, wait_s: int) -> None:
    offset: object = None
    failures = 0
    while True:
        try:
            messages, later = await adapter.updates(tenant, offset, wait_s)
        except RetryLater as exc:
            failures += 1
            delay = exc.retry_after or min(MAX_BACKOFF_S, 2.0**failures)
            log.warning("%s %s: polling failed (%s); again in %.0f s", tenant, name, exc, delay)
            await asyncio.sleep(delay)
            continue
        except SendError as exc:
            raise PollFailed(f"{tenant} {name}: the provider refused polling: {exc}") from exc
        failures = 0
        for msg in messages:
            await _accept(accept, name, msg)
        offset = later


async def _accept(accept: Accept, channel: str, msg: InboundMessage) -> None:
    """Accept one message, waiting out a Redis outage: it is not confirmed to the provider before this."""
    failures = 0
    while True:
        try:
            outcome = await accept(msg)
        except RedisError as exc:
            failures += 1
            log.warning("%s update not accepted yet, Redis failed: %s", channel, exc)
            await asyncio.sleep(min(MAX_BACKOFF_S, 2.0**failures))
            continue
        metrics.INGESTED.labels(channel, outcome.name.lower()).inc()
        return
