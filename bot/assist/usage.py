"""``bookingbot usage``: a tenant's LLM spend in one month, by day (in the tenant's timezone), purpose and model."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime
from zoneinfo import ZoneInfo

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.tables import LLM_USAGE


class UsageLine(BaseModel):
    day: date
    purpose: str
    model: str
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def month_bounds(month: str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The first moment of ``YYYY-MM`` and of the next month, in ``tz``."""
    try:
        first = datetime.strptime(month, "%Y-%m").replace(tzinfo=tz)
    except ValueError:
        raise ValueError(f"--month {month!r} is not YYYY-MM") from None
    after = first.replace(year=first.year + first.month // 12, month=first.month % 12 + 1)
    return first, after


async def usage_lines(db: AsyncEngine, tenant: str, tz: ZoneInfo, month: str) -> list[UsageLine]:
    start, end = month_bounds(month, tz)
    query = select(LLM_USAGE).where(LLM_USAGE.c.tenant == tenant, LLM_USAGE.c.at >= start, LLM_USAGE.c.at < end)
    lines: dict[tuple[date, str, str], UsageLine] = {}
    async with db.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    for row in rows:
        day = row["at"].astimezone(tz).date()
        line = lines.setdefault((day, row["purpose"], row["model"]), UsageLine(day=day, purpose=row["purpose"],
                                                                               model=row["model"]))  # fmt: skip
        line.calls += 1
        line.prompt_tokens += row["prompt_tokens"]
        line.completion_tokens += row["completion_tokens"]
        line.cached_tokens += row["cached_tokens"]
    return [lines[k] for k in sorted(lines)]


def render(tenant: str, month: str, lines: list[UsageLine]) -> str:
    header = ("day", "purpose", "model", "calls", "prompt", "completion", "cached", "total")
    rows = [
        (str(x.day), x.purpose, x.model, x.calls, x.prompt_tokens, x.completion_tokens, x.cached_tokens, x.total)
        for x in lines
    ]
    sums: dict[str, int] = defaultdict(int)
    for x in lines:
        sums["calls"] += x.calls
        sums["prompt"] += x.prompt_tokens
        sums["completion"] += x.completion_tokens
        sums["cached"] += x.cached_tokens
    total = ("total", "", "", sums["calls"], sums["prompt"], sums["completion"], sums["cached"],
             sums["prompt"] + sums["completion"])  # fmt: skip
    table = [header, *rows, total]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    out = [f"LLM usage of {tenant} in {month} (tokens)"]
    for r in table:
        cells = zip(r, widths, strict=True)
        out.append("  ".join(str(v).rjust(w) if isinstance(v, int) else str(v).ljust(w) for v, w in cells).rstrip())
    return "\n".join(out)
