"""One :class:`Assistant` per tenant whose LLM is on: its provider, budgets, paraphraser and slot fallback.

The LLM is on for a tenant when the effective config (the tenant's ``llm:`` keys over the global ones, key by
key) has an API key and asks for ``paraphrase`` or ``extract``. Budgets count in the tenant's timezone, by the
wall clock (the provider bills now, whatever clock a replay or ``chat --now`` runs the dialog on).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from pydantic import BaseModel
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot import keys, metrics
from bot.assist.observe import Observer
from bot.settings import BudgetConfig, LLMConfig
from dialogs.model import Reply
from dialogs.ports import SlotQuery, TenantProfile
from dialogs.session import Session
from llm.extract import SlotAsk, extract_slots
from llm.metered import CallMeta, MeteredProvider
from llm.paraphrase import ParaphraseJob, Paraphraser
from llm.provider import ChatProvider, ProviderConfig
from llm.quota import Budget, QuotaLedger

DAY_TTL_S = 2 * 86400
MONTH_TTL_S = 32 * 86400
CACHE_TTL_S = 7 * 86400
EXTRACTABLE = ("service", "date", "time", "name", "phone", "email")


class EffectiveLLM(BaseModel):
    base_url: str = "https://api.openai.com/v1"
    api_key: str = ""
    model: str = "gpt-4o-mini"
    timeout_seconds: float = 5.0
    paraphrase: bool = False
    style: str = ""
    extract: bool = False
    budget: BudgetConfig = BudgetConfig()

    @property
    def on(self) -> bool:
        return bool(self.api_key) and (self.paraphrase or self.extract)


def effective_llm(global_cfg: LLMConfig, tenant_cfg: LLMConfig) -> EffectiveLLM:
    """The tenant's keys over the global ones, key by key (``budget``'s keys too); unset keys keep defaults."""
    merged: dict[str, object] = {}
    for cfg in (global_cfg, tenant_cfg):
        for name, value in cfg.model_dump(exclude_none=True, exclude={"budget"}).items():
            merged[name] = value
    budget: dict[str, object] = {}
    for cfg in (global_cfg, tenant_cfg):
        if cfg.budget is not None:
            budget.update(cfg.budget.model_dump(exclude_unset=True))
    return EffectiveLLM.model_validate({**merged, "budget": BudgetConfig.model_validate(budget)})


class Assistant:
    """A tenant's LLM: paraphrases replies and reads slots the rules could not, within its budgets."""

    def __init__(
        self, profile: TenantProfile, llm: EffectiveLLM, metered: MeteredProvider, redis: Redis, cache_of: str
    ) -> None:
        self.profile = profile
        self.llm = llm
        self.metered = metered

        def cache_key(tenant: str, digest: str) -> str:
            return keys.paraphrase(cache_of, digest)

        self.paraphraser = Paraphraser(metered, redis, cache_key, style=llm.style, ttl_seconds=CACHE_TTL_S)

    def budgets(self, conversation: str) -> list[Budget]:
        today = datetime.now(UTC).astimezone(ZoneInfo(self.profile.timezone))
        day, month, b, tenant = today.date().isoformat(), today.strftime("%Y-%m"), self.llm.budget, self.profile.id
        return [
            Budget(name="daily", key=keys.llm_budget(tenant, "day", day), limit=b.daily_tokens, ttl_seconds=DAY_TTL_S),
            Budget(
                name="monthly",
                key=keys.llm_budget(tenant, "month", month),
                limit=b.monthly_tokens,
                ttl_seconds=MONTH_TTL_S,
            ),
            Budget(
                name="customer_daily",
                key=keys.llm_budget(tenant, f"conv:{conversation}", day),
                limit=b.customer_daily_tokens,
                ttl_seconds=DAY_TTL_S,
                alert=False,  # a conversation's budget protects the tenant; the operator is told about theirs
            ),
        ]

    async def paraphrase(self, session: Session, replies: Sequence[Reply]) -> list[Reply]:
        """The replies with their texts paraphrased where the guard allows; all at once, so a turn waits at
        most one timeout."""
        if not self.llm.paraphrase:
            return list(replies)
        meta = CallMeta(tenant=self.profile.id, conversation=session.conversation, purpose="paraphrase")
        budgets = self.budgets(session.conversation)
        texts = await asyncio.gather(*(self._one(reply, budgets, meta) for reply in replies))
        return [reply.model_copy(update={"text": text}) for reply, text in zip(replies, texts, strict=True)]

    async def _one(self, reply: Reply, budgets: list[Budget], meta: CallMeta) -> str:
        if not reply.text.strip():
            return reply.text
        job = ParaphraseJob(
            locale=self.profile.locale,
            key=reply.key,
            text=reply.text,
            facts=tuple(reply.facts.values()),
            labels=tuple(b.label for b in reply.buttons),
        )
        text, source = await self.paraphraser.paraphrase(job, budgets, meta)
        metrics.LLM_PARAPHRASES.labels(source).inc()
        return text

    async def __call__(self, query: SlotQuery) -> Mapping[str, str]:
        """The engine's :class:`~dialogs.ports.SlotFallback`: slots the LLM reads in a message."""
        ask = SlotAsk(
            text=query.text,
            business=self.profile.name,
            today=query.now.strftime("%A %Y-%m-%d"),
            timezone=self.profile.timezone,
            services=tuple((s.id, s.label) for s in self.profile.services),
            slots=tuple(s for s in query.slots if s in EXTRACTABLE),
            expecting=query.expecting,
        )
        meta = CallMeta(tenant=self.profile.id, conversation=query.conversation, purpose="extract")
        return await extract_slots(self.metered, ask, self.budgets(query.conversation), meta)


def build_assistant(
    profile: TenantProfile,
    global_cfg: LLMConfig,
    tenant_cfg: LLMConfig,
    redis: Redis,
    db: AsyncEngine,
    *,
    cache_of: str | None = None,
) -> Assistant | None:
    """The tenant's assistant, or None when its LLM is off (no API key, or neither paraphrase nor extract).
    ``cache_of``: the tenant whose paraphrase cache to use (a replay alias shares its tenant's)."""
    llm = effective_llm(global_cfg, tenant_cfg)
    if not llm.on:
        return None
    provider = ChatProvider(
        ProviderConfig(base_url=llm.base_url, api_key=llm.api_key, model=llm.model, timeout_seconds=llm.timeout_seconds)
    )
    metered = MeteredProvider(provider, QuotaLedger(redis), Observer(db, llm.budget.alert_webhook))
    return Assistant(profile, llm, metered, redis, cache_of or profile.id)
