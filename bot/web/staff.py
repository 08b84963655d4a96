"""What staff see: a tenant's bookings by day (``bookingbot bookings``) and the read-only page
``/staff/{tenant}?token=...`` (today's and upcoming bookings, recent conversations and their dialog state).

Bookings come from the tenant's booking backend (``active_bookings``: any backend); conversations from the
message log, their state from the sessions in Redis. The page is enabled per tenant by ``staff_token``.
"""

from __future__ import annotations

import hmac
import html
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select

from bot.booking.base import Booking
from bot.runtime import Runtime
from bot.tables import CONVERSATIONS, CUSTOMERS

RECENT = 20  # conversations on the page
UPCOMING_DAYS = 7


class StaffRefused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


@dataclass(frozen=True)
class ConversationLine:
    id: str
    name: str | None
    last_at: datetime
    state: str


async def bookings_between(runtime: Runtime, tenant: str, first: date, days: int) -> list[Booking]:
    """Active bookings starting on ``first`` .. ``first + days - 1`` (the tenant's local dates), by start."""
    tz = runtime.tenant(tenant).profile.tz
    last = first + timedelta(days=days - 1)
    every = await runtime.tenant(tenant).calendar.active_bookings()
    return [b for b in every if first <= b.start.astimezone(tz).date() <= last]


async def recent_conversations(runtime: Runtime, tenant: str, limit: int = RECENT) -> list[ConversationLine]:
    """The latest conversations (message log), each with the dialog state of its session ("ended" when the
    session has expired)."""
    await runtime.log.flush()
    query = (
        select(CONVERSATIONS.c.id, CONVERSATIONS.c.last_at, CUSTOMERS.c.name)
        .select_from(CONVERSATIONS.outerjoin(
            CUSTOMERS, (CUSTOMERS.c.tenant == CONVERSATIONS.c.tenant) & (CUSTOMERS.c.id == CONVERSATIONS.c.customer)
        ))
        .where(CONVERSATIONS.c.tenant == tenant)
        .order_by(CONVERSATIONS.c.last_at.desc())
        .limit(limit)
    )  # fmt: skip
    async with runtime.db.connect() as conn:
        rows = (await conn.execute(query)).all()
    lines = []
    for row in rows:
        session = await runtime.sessions.load(tenant, row.id)
        lines.append(ConversationLine(row.id, row.name, row.last_at, session.state if session else "ended"))
    return lines


def booking_line(booking: Booking, tz: ZoneInfo) -> str:
    start = booking.start.astimezone(tz)
    return f"{start:%a %d %b %H:%M}  {booking.minutes:>3} min  {booking.service:<16} {booking.name}  {booking.phone}"


async def print_bookings(runtime: Runtime, tenant: str, day: date | None, week: bool) -> int:
    """``bookingbot bookings``: one line per booking of the day (default: today) or of 7 days from it."""
    tz = runtime.tenant(tenant).profile.tz
    first = day or datetime.now(UTC).astimezone(tz).date()
    days = UPCOMING_DAYS if week else 1
    found = await bookings_between(runtime, tenant, first, days)
    span = f"{first:%a %d %b %Y}" + (f" - {first + timedelta(days=days - 1):%a %d %b %Y}" if week else "")
    print(f"{tenant}: {len(found)} booking{'s' if len(found) != 1 else ''}, {span} ({tz.key})")
    for booking in found:
        print(f"  {booking_line(booking, tz)}")
    sys.stdout.flush()
    return 0


async def staff_page(runtime: Runtime, tenant: str, token: str | None) -> str:
    """The page for staff holding the tenant's ``staff_token``; StaffRefused (404 / 401) otherwise."""
    cfg = runtime.settings.tenants.get(tenant)
    if cfg is None or cfg.staff_token is None:
        raise StaffRefused(404, f"no staff page for tenant {tenant!r} (set its staff_token to enable it)")
    if token is None or not hmac.compare_digest(token.encode(), cfg.staff_token.encode()):
        raise StaffRefused(401, "missing or wrong token (open /staff/<tenant>?token=<its staff_token>)")
    tz = runtime.tenant(tenant).profile.tz
    today = datetime.now(UTC).astimezone(tz).date()
    todays = await bookings_between(runtime, tenant, today, 1)
    upcoming = await bookings_between(runtime, tenant, today + timedelta(days=1), UPCOMING_DAYS)
    conversations = await recent_conversations(runtime, tenant)
    return _page(cfg.name, tz, todays, upcoming, conversations)


def _page(name: str, tz: ZoneInfo, today: list[Booking], upcoming: list[Booking], talks: list[ConversationLine]) -> str:
    e = html.escape

    def bookings(title: str, items: list[Booking], section: str) -> str:
        rows = "".join(
            f"<tr><td>{b.start.astimezone(tz):%a %d %b %H:%M}</td><td>{b.minutes} min</td><td>{e(b.service)}</td>"
            f"<td>{e(b.name)}</td><td>{e(b.phone)}</td></tr>"
            for b in items
        )
        body = f"<table>{rows}</table>" if items else "<p class=none>No bookings.</p>"
        return f'<section id="{section}"><h2>{title}</h2>{body}</section>'

    talk_rows = "".join(
        f"<tr><td>{t.last_at.astimezone(tz):%a %d %b %H:%M}</td><td>{e(t.id)}</td><td>{e(t.name or '')}</td>"
        f"<td class=state>{e(t.state)}</td></tr>"
        for t in talks
    )
    talk_body = f"<table>{talk_rows}</table>" if talks else "<p class=none>No conversations yet.</p>"
    return f"""<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="robots" content="noindex">
<title>{e(name)}: bookings</title><link rel="icon" href="/favicon.ico">
<style>body{{font:15px system-ui,sans-serif;margin:1rem;max-width:60rem}}table{{border-collapse:collapse;width:100%}}
td{{padding:.3rem .5rem;border-bottom:1px solid #ddd}}.none{{color:#777}}.state{{font-family:monospace}}</style>
</head><body><h1>{e(name)}</h1><p>Times in {e(tz.key)}. Read-only; reload to refresh.</p>
{bookings("Today", today, "today")}{bookings(f"Next {UPCOMING_DAYS} days", upcoming, "upcoming")}
<section id="conversations"><h2>Recent conversations</h2>{talk_body}</section></body></html>"""
