"""Service wiring and lifecycle: one :class:`Runtime` per process holds every long-lived client.

Built from :class:`bot.settings.Settings`; ``start()`` connects Redis (embedded when no URL is set), the
database (SQLite under ``data_dir`` when no URL is set) and migrates it, and builds one :class:`Tenant` per
configured tenant (its dialog engine, built once, and its booking backend).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import delete
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot import db, keys, tables
from bot import redis as redis_conn
from bot.assist.wiring import Assistant, build_assistant
from bot.booking.base import BookingBackend, BookingWritten
from bot.booking.local import LocalCalendar
from bot.crm.erxes import ErxesClient
from bot.crm.outbox import Outbox
from bot.crm.recorder import CrmRecorder
from bot.crm.relay import OutboxRelay
from bot.crm.sync import ErxesSync
from bot.exceptions import ConfigError
from bot.handoff import HandoffDesk
from bot.inbox import Inbox
from bot.messagelog import MessageLog
from bot.profile import tenant_profile
from bot.reminders import Reminders, Reminding
from bot.retry import Backoff
from bot.sessions import SessionStore
from bot.settings import Settings, TenantConfig
from bot.voice import Voice
from dialogs.engine import Engine
from dialogs.exceptions import Problem
from dialogs.loader import builtin_template
from dialogs.ports import SlotFallback, TenantProfile
from llm.provider import close_clients

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tenant:
    id: str
    config: TenantConfig
    profile: TenantProfile
    engine: Engine
    calendar: BookingBackend
    assistant: Assistant | None = None  # the tenant's LLM, when it is on
    crm: CrmRecorder | None = None  # queues CRM work (None: no crm block)
    erxes: ErxesSync | None = None  # delivers it
    desk: HandoffDesk | None = None  # where handoffs to a person go (set by the Runtime, which has Redis)


def build_engine(profile: TenantProfile, cfg: TenantConfig, slot_fallback: SlotFallback | None = None) -> Engine:
    overrides = {name: (o.required, o.validators) for name, o in cfg.dialog.slots.items()}
    return Engine(
        builtin_template(cfg.dialog.template),
        profile,
        max_attempts=cfg.dialog.max_attempts,
        slot_overrides=overrides,
        slot_fallback=slot_fallback,
    )


def build_tenant(
    tenant_id: str,
    cfg: TenantConfig,
    engine: AsyncEngine,
    assistant: Assistant | None = None,
    reminders: Reminders | None = None,
    profile: TenantProfile | None = None,
) -> Tenant:
    """A tenant's profile (unless the caller built it already), dialog engine, booking backend and CRM, from its
    config (with its LLM, when it is on, and its reminders, if any)."""
    profile = profile or tenant_profile(tenant_id, cfg)
    crm = erxes = None
    if cfg.crm is not None:
        crm = CrmRecorder(engine, tenant_id, cfg.crm.erxes, {s.id: s.label for s in cfg.services})
        erxes = ErxesSync(ErxesClient(cfg.crm.erxes))
    calendar = build_calendar(tenant_id, cfg, engine, crm.booking_written if crm else None)
    offsets = cfg.reminders.offsets()
    if reminders is not None and offsets:
        calendar = Reminding(calendar, reminders, offsets, lambda: datetime.now(UTC))
    fallback = assistant if assistant is not None and assistant.llm.extract else None
    engine_ = build_engine(profile, cfg, fallback)
    return Tenant(tenant_id, cfg, profile, engine_, calendar, assistant, crm=crm, erxes=erxes)


def build_calendar(
    tenant_id: str, cfg: TenantConfig, engine: AsyncEngine, on_write: BookingWritten | None = None
) -> BookingBackend:
    if cfg.booking.backend == "calcom":
        assert cfg.booking.calcom is not None, "check-config requires the calcom block"
        from bot.booking.calcom import CalcomCalendar

        return CalcomCalendar(
            engine,
            tenant_id,
            ZoneInfo(cfg.timezone),
            cfg.hours,
            {s.id: s.minutes for s in cfg.services},
            cfg.booking.calcom,
            locale=cfg.locale,
            horizon_days=cfg.booking.horizon_days,
            cache_seconds=cfg.booking.availability_cache_seconds,
            on_write=on_write,
        )
    return LocalCalendar(
        engine,
        tenant_id,
        ZoneInfo(cfg.timezone),
        cfg.hours,
        {s.id: s.minutes for s in cfg.services},
        cfg.booking.slot_step,
        cfg.booking.horizon_days,
        cache_seconds=cfg.booking.availability_cache_seconds,
        on_write=on_write,
    )


def database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    return f"sqlite+aiosqlite:///{Path(settings.data_dir).resolve() / 'bookingbot.db'}"


class Runtime:
    def __init__(self, settings: Settings, redis: Redis, engine: AsyncEngine, log: MessageLog) -> None:
        self.settings = settings
        self.redis = redis
        self.db = engine
        self.log = log
        self.sessions = SessionStore(redis, ttl_seconds=settings.session_ttl_days * 86400)
        self.inbox = Inbox(redis)
        self.outbox = Outbox(engine)
        self.relay: OutboxRelay | None = None
        self.voice = Voice(settings)
        self.reminders = Reminders(redis)
        self.tenants: dict[str, Tenant] = {}
        for tenant_id, cfg in settings.tenants.items():
            self.add_tenant(tenant_id, cfg)

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        await asyncio.to_thread(Path(settings.data_dir).mkdir, parents=True, exist_ok=True)
        url = database_url(settings)
        await db.migrate(url)
        engine = db.make_engine(url)
        try:
            redis = await redis_conn.connect(settings.redis_url, settings.data_dir)
        except BaseException:
            await engine.dispose()
            raise
        messages = MessageLog(engine)
        await messages.start()
        return cls(settings, redis, engine, messages)

    @classmethod
    async def start_when_reachable(cls, settings: Settings) -> Runtime:
        """:meth:`start`, waiting with backoff (and saying so) while Redis or the database cannot be reached:
        a server or worker started before its storage, or during an outage, comes up when the storage does."""
        waits = Backoff(base=0.5, cap=10.0, floor=0.5)
        for attempt in itertools.count():
            try:
                return await cls.start(settings)
            except (RedisError, OSError, SQLAlchemyError) as exc:
                delay = waits.delay(attempt)
                log.error("storage unreachable (%r); trying again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def add_tenant(self, tenant_id: str, cfg: TenantConfig, *, alias_of: str | None = None) -> Tenant:
        """Build a tenant (also used by replay to run a fixture under a fresh alias of a configured tenant: an
        alias shares its tenant's paraphrase cache, which holds nothing of a conversation)."""
        profile = tenant_profile(tenant_id, cfg)
        llm = build_assistant(profile, self.settings.llm, cfg.llm, self.redis, self.db, cache_of=alias_of)
        desk = HandoffDesk(self.redis, self.sessions, cfg.handoff.webhook_url)
        tenant = build_tenant(tenant_id, cfg, self.db, llm, self.reminders, profile)
        tenant = dataclasses.replace(tenant, desk=desk)
        self.tenants[tenant_id] = tenant
        return tenant

    def start_relay(self, **options: Any) -> OutboxRelay:
        """Deliver this process's share of the CRM outbox (the worker; the server or chat in embedded mode)."""
        if self.relay is None:
            self.relay = OutboxRelay(self.outbox, self._erxes_syncs, **options)
            self.relay.start()
        return self.relay

    def _erxes_syncs(self) -> dict[str, ErxesSync]:
        return {tenant_id: t.erxes for tenant_id, t in self.tenants.items() if t.erxes is not None}

    def tenant(self, tenant_id: str) -> Tenant:
        try:
            return self.tenants[tenant_id]
        except KeyError:
            known = ", ".join(sorted(self.tenants))
            raise ConfigError([Problem("<cli>", 0, f"unknown tenant {tenant_id!r} (configured: {known})")]) from None

    async def drop_tenant(self, tenant_id: str) -> None:
        """Forget a tenant and delete all its data: rows in every table and every Redis key (replay, bench)."""
        tenant = self.tenants.pop(tenant_id, None)
        if tenant is not None:
            await tenant.calendar.aclose()
            if tenant.erxes is not None:
                await tenant.erxes.client.aclose()
        await self.log.flush()
        async with self.db.begin() as conn:
            for table in tables.TENANT_TABLES:
                await conn.execute(delete(table).where(table.c.tenant == tenant_id))
        await self.reminders.drop(tenant_id)  # their arq jobs live under arq's keys, not the tenant's
        async for key in self.redis.scan_iter(match=keys.tenant_pattern(tenant_id), count=500):
            await self.redis.delete(key)

    async def aclose(self) -> None:
        if self.relay is not None:
            await self.relay.aclose()
        for tenant in self.tenants.values():
            await tenant.calendar.aclose()
            if tenant.erxes is not None:
                await tenant.erxes.client.aclose()
        self.voice.close()
        await close_clients()
        await self.log.aclose()
        await redis_conn.close(self.redis)
        await self.db.dispose()
