"""Per-tenant token budgets that are never overspent: reserve the worst case, then commit what was used.

Each budget (a tenant's day, its month, a conversation's day) is one Redis hash: ``used`` (committed tokens),
``reserved`` (held by calls in flight), one ``r:<id>`` field per reservation (``amount:expires_ms``) and the
alert marks ``a80`` / ``a100``. :meth:`QuotaLedger.reserve` checks and holds the worst case of a call against
every budget it touches in one script (one round trip, atomic), so concurrent calls can never all pass the check
with the same headroom; :meth:`QuotaLedger.settle` commits the tokens the provider reported and releases the rest.
A reservation that is never settled (a crashed worker) expires and is dropped by the next reserve.

Key names come from the caller (``bot/keys.py`` builds them): this module never invents a key.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

# KEYS: budget hashes. ARGV: id, amount, now_ms, expires_ms, then per key: limit (-1: none), ttl_ms.
# Returns {0} when held, else {index (1-based) of the first budget without room, its used, its limit, then
# 80 and/or 100 for alerts raised now: a budget that cannot take this call even with no other call in flight is
# spent (its 80% mark is passed on the way, if no settled call crossed it)}.
_RESERVE = """
local id, amount, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local n = #KEYS
for i = 1, n do
  local fields = redis.call('HGETALL', KEYS[i])
  local reserved = 0
  for j = 1, #fields, 2 do
    local f = fields[j]
    if string.sub(f, 1, 2) == 'r:' then
      local amt, exp = string.match(fields[j + 1], '^(%d+):(%d+)$')
      if tonumber(exp) <= now then
        redis.call('HDEL', KEYS[i], f)
      else
        reserved = reserved + tonumber(amt)
      end
    end
  end
  redis.call('HSET', KEYS[i], 'reserved', reserved)
  local limit = tonumber(ARGV[3 + 2 * i])
  local used = tonumber(redis.call('HGET', KEYS[i], 'used') or '0')
  if limit >= 0 and used + reserved + amount > limit then
    local answer = {i, used, limit}
    if used + amount > limit then
      for _, pct in ipairs({80, 100}) do
        if redis.call('HSETNX', KEYS[i], 'a' .. pct, 1) == 1 then table.insert(answer, pct) end
      end
    end
    return answer
  end
end
for i = 1, n do
  redis.call('HSET', KEYS[i], 'r:' .. id, amount .. ':' .. ARGV[4])
  redis.call('HINCRBY', KEYS[i], 'reserved', amount)
  redis.call('PEXPIRE', KEYS[i], ARGV[4 + 2 * i])
end
return {0}
"""

# KEYS: the reservation's budget hashes. ARGV: id, used tokens, then per key: limit (-1: none), alert (0/1).
# Returns a flat list of {index, threshold (80|100), used} for every alert raised now (once per period).
_SETTLE = """
local id, actual = ARGV[1], tonumber(ARGV[2])
local raised = {}
for i = 1, #KEYS do
  local held = redis.call('HGET', KEYS[i], 'r:' .. id)
  if held then
    redis.call('HDEL', KEYS[i], 'r:' .. id)
    local amt = tonumber(string.match(held, '^(%d+):'))
    redis.call('HINCRBY', KEYS[i], 'reserved', -amt)
  end
  local used = redis.call('HINCRBY', KEYS[i], 'used', actual)
  local limit, alert = tonumber(ARGV[1 + 2 * i]), ARGV[2 + 2 * i]
  if alert == '1' and limit > 0 then
    for _, pct in ipairs({80, 100}) do
      if used * 100 >= limit * pct and redis.call('HSETNX', KEYS[i], 'a' .. pct, 1) == 1 then
        table.insert(raised, i); table.insert(raised, pct); table.insert(raised, used)
      end
    end
  end
end
return raised
"""


class Budget(BaseModel):
    """One budget a call counts against: ``limit`` None means no limit (usage is still counted)."""

    model_config = ConfigDict(frozen=True)

    name: str  # "daily" | "monthly" | "customer_daily": what alerts and refusals report
    key: str
    limit: int | None
    ttl_seconds: int  # the hash outlives its period by this much at most
    alert: bool = True


class Reservation(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    tokens: int
    budgets: tuple[Budget, ...]


class Refusal(BaseModel):
    """No room: ``budget`` has ``used`` of ``limit`` tokens committed (plus calls in flight)."""

    model_config = ConfigDict(frozen=True)

    budget: Budget
    used: int
    limit: int
    alerts: tuple[int, ...]  # thresholds (80, 100) raised by this refusal: the budget cannot take such a call


class Alert(BaseModel):
    model_config = ConfigDict(frozen=True)

    budget: Budget
    threshold: int  # 80 | 100
    used: int


class QuotaLedger:
    def __init__(self, redis: Redis, *, hold_seconds: float = 120.0) -> None:
        """``hold_seconds``: how long a reservation stays held when nobody settles it (longer than any call)."""
        self._redis = redis
        self.hold_ms = int(hold_seconds * 1000)
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)

    async def reserve(self, budgets: Sequence[Budget], tokens: int, now_ms: int) -> Reservation | Refusal:
        """Hold ``tokens`` against every budget, or none of them (a :class:`Refusal`)."""
        rid = uuid.uuid4().hex
        args: list[Any] = [rid, tokens, now_ms, now_ms + self.hold_ms]
        for budget in budgets:
            args += [-1 if budget.limit is None else budget.limit, budget.ttl_seconds * 1000]
        answer = await self._reserve(keys=[b.key for b in budgets], args=args)
        if int(answer[0]) == 0:
            return Reservation(id=rid, tokens=tokens, budgets=tuple(budgets))
        index, used, limit, *alerts = (int(x) for x in answer)
        return Refusal(budget=budgets[index - 1], used=used, limit=limit, alerts=tuple(alerts))

    async def settle(self, reservation: Reservation, used_tokens: int) -> list[Alert]:
        """Commit ``used_tokens`` and release the rest of the reservation; the alerts this crossed."""
        args: list[Any] = [reservation.id, used_tokens]
        for budget in reservation.budgets:
            args += [-1 if budget.limit is None else budget.limit, int(budget.alert)]
        raised = await self._settle(keys=[b.key for b in reservation.budgets], args=args)
        flat = [int(x) for x in raised]
        return [
            Alert(budget=reservation.budgets[flat[i] - 1], threshold=flat[i + 1], used=flat[i + 2])
            for i in range(0, len(flat), 3)
        ]

    async def used(self, budget: Budget) -> int:
        """Committed tokens of a budget (for reports and tests)."""
        value = await self._redis.hget(budget.key, "used")  # type: ignore[misc]
        return int(value or 0)
