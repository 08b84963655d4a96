"""Where :mod:`llm` reports to: one usage row per provider call (SQL), metrics, and budget alerts (a log line,
a metric and the tenant's optional webhook), each alert once per budget period (the ledger decides "once")."""

from __future__ import annotations

import logging

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from bot import metrics, tables
from llm.metered import CallMeta, UsageRecord
from llm.quota import Alert, Refusal

log = logging.getLogger(__name__)
WEBHOOK_ATTEMPTS = 2
WEBHOOK_TIMEOUT_S = 3.0


class Observer:
    def __init__(self, db: AsyncEngine, alert_webhook: str | None) -> None:
        self._db = db
        self.alert_webhook = alert_webhook

    async def usage(self, record: UsageRecord) -> None:
        async with self._db.begin() as conn:
            await conn.execute(insert(tables.LLM_USAGE).values(**record.model_dump()))
        metrics.LLM_CALLS.labels(record.purpose, record.outcome).inc()
        metrics.LLM_TOKENS.labels(record.purpose, "prompt").inc(record.prompt_tokens)
        metrics.LLM_TOKENS.labels(record.purpose, "completion").inc(record.completion_tokens)

    async def refused(self, meta: CallMeta, refusal: Refusal) -> None:
        metrics.LLM_CALLS.labels(meta.purpose, "over_budget").inc()
        log.info("%s: %s not asked: %s budget has %d of %d tokens used", meta.tenant, meta.purpose,
                 refusal.budget.name, refusal.used, refusal.limit)  # fmt: skip

    async def alert(self, tenant: str, alert: Alert) -> None:
        limit = alert.budget.limit or 0
        log.warning("%s: LLM %s token budget at %d%%: %d of %d tokens used", tenant, alert.budget.name,
                    alert.threshold, alert.used, limit)  # fmt: skip
        metrics.LLM_BUDGET_ALERTS.labels(alert.budget.name, str(alert.threshold)).inc()
        if self.alert_webhook:
            body = {"tenant": tenant, "budget": alert.budget.name, "threshold": alert.threshold,
                    "used_tokens": alert.used, "limit_tokens": limit}  # fmt: skip
            await _post(self.alert_webhook, body)


async def _post(url: str, body: dict[str, object]) -> None:
    """POST an alert, retried once; a failure is logged (the alert was already logged and counted)."""
    import httpx  # only when an alert fires: keeps it off every command's start-up

    async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S) as client:
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            try:
                response = await client.post(url, json=body)
                response.raise_for_status()
                return
            except httpx.HTTPError as exc:
                if attempt == WEBHOOK_ATTEMPTS:
                    log.error("budget alert webhook %s failed: %r", url, exc)
