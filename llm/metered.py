"""Every provider call goes through here: reserve its worst case, call, settle what was used, record it.

A call that cannot reserve is not made. After a timeout the provider may still have done (and billed) the work,
so the whole reservation is committed; after an error answer nothing was billed and it is released.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from llm.exceptions import LLMError, ProviderTimeout
from llm.provider import ChatProvider, ChatRequest, Completion
from llm.quota import Alert, Budget, QuotaLedger, Refusal, Reservation

T = TypeVar("T")


class CallMeta(BaseModel):
    model_config = ConfigDict(frozen=True)

    tenant: str
    conversation: str
    purpose: str  # "paraphrase" | "extract"


class UsageRecord(BaseModel):
    """One provider call, as the usage table stores it."""

    tenant: str
    conversation: str
    purpose: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens the provider served from its own prompt cache
    outcome: str  # ok | rejected (guard / schema) | error | timeout
    at: datetime


class Observer(Protocol):
    """Where usage rows, budget alerts and refusals go (``bot/`` writes SQL, logs, metrics, webhooks)."""

    async def usage(self, record: UsageRecord) -> None: ...

    async def alert(self, tenant: str, alert: Alert) -> None: ...

    async def refused(self, meta: CallMeta, refusal: Refusal) -> None: ...


Accept = Callable[[Completion], T | None]  # the call's result, or None when the answer is unusable


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What a metered call came to: ``value`` when ``outcome`` is "ok"; else over_budget, error, timeout or
    rejected (the provider answered, but ``accept`` refused the answer)."""

    outcome: str
    value: T | None = None


class MeteredProvider:
    def __init__(self, provider: ChatProvider, ledger: QuotaLedger, observer: Observer) -> None:
        self.provider = provider
        self.ledger = ledger
        self.observer = observer

    async def call(
        self, request: ChatRequest, budgets: Sequence[Budget], meta: CallMeta, accept: Accept[T]
    ) -> Outcome[T]:
        """Reserve, call, settle, record; the call is not made when a budget has no room."""
        held = await self.ledger.reserve(budgets, request.worst_case(), int(time.time() * 1000))
        if isinstance(held, Refusal):
            await self.observer.refused(meta, held)
            for threshold in held.alerts:
                await self.observer.alert(meta.tenant, Alert(budget=held.budget, threshold=threshold, used=held.used))
            return Outcome("over_budget")
        try:
            completion = await self.provider.complete(request)
        except ProviderTimeout:
            await self._finish(meta, held, None, "timeout", held.tokens)
            return Outcome("timeout")
        except LLMError:  # (a cancelled call leaves its reservation to expire: its fate is unknown)
            await self._finish(meta, held, None, "error", 0)
            return Outcome("error")
        result = accept(completion)
        outcome = "ok" if result is not None else "rejected"
        await self._finish(meta, held, completion, outcome, completion.total_tokens)
        return Outcome(outcome, result)

    async def _finish(
        self, meta: CallMeta, held: Reservation, completion: Completion | None, outcome: str, tokens: int
    ) -> None:
        for alert in await self.ledger.settle(held, tokens):
            await self.observer.alert(meta.tenant, alert)
        await self.observer.usage(
            UsageRecord(
                tenant=meta.tenant,
                conversation=meta.conversation,
                purpose=meta.purpose,
                model=completion.model if completion else self.provider.config.model,
                prompt_tokens=completion.prompt_tokens if completion else 0,
                completion_tokens=completion.completion_tokens if completion else 0,
                cached_tokens=completion.cached_tokens if completion else 0,
                outcome=outcome,
                at=datetime.now(UTC),
            )
        )
