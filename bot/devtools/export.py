"""``bookingbot export``: a conversation from the message log, written as a replay fixture (DESIGN section 6).

Each inbound message becomes a turn that expects the dialog state it led to; a pause of a minute or more
becomes ``wait:``; the tenant's other bookings become ``calendar.busy`` so taken times replay as taken.
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from typing import Any

from ruamel.yaml import YAML

from bot.messagelog import LoggedMessage
from bot.runtime import Runtime


async def export_fixture(runtime: Runtime, tenant_id: str, conversation: str) -> str | None:
    tenant = runtime.tenant(tenant_id)
    await runtime.log.flush()
    rows = [r for r in await runtime.log.conversation(tenant_id, conversation) if r.direction == "in"]
    if not rows:
        return None
    channel = conversation.partition(":")[0]
    bookings = await tenant.calendar.active_bookings()
    local = tenant.profile.tz
    doc: dict[str, Any] = {
        "tenant": tenant_id,
        "channel": channel,
        "now": rows[0].at.isoformat(),
        "description": f"exported from the message log: {tenant_id}/{conversation}",
    }
    busy = [
        {"start": b.start.astimezone(local).strftime("%Y-%m-%dT%H:%M"), "minutes": b.minutes}
        for b in bookings
        if b.customer != conversation
    ]
    if busy:
        doc["calendar"] = {"busy": busy}
    doc["turns"] = _turns(rows)
    doc["expect_end"] = {
        "state": rows[-1].state,
        "bookings": [
            {"service": b.service, "start": b.start.astimezone(local).strftime("%Y-%m-%dT%H:%M")}
            for b in bookings
            if b.customer == conversation
        ],
    }
    out = io.StringIO()
    yaml = YAML()
    yaml.default_flow_style = None
    yaml.dump(doc, out)
    return out.getvalue()


def _turns(rows: list[LoggedMessage]) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    previous: datetime | None = None
    for row in rows:
        if previous is not None and row.at - previous >= timedelta(minutes=1):
            turns.append({"wait": f"{int((row.at - previous).total_seconds() // 60)}m"})
        previous = row.at
        turns.append({**_action(row), "expect": {"state": row.state}})
    return turns


def _action(row: LoggedMessage) -> dict[str, str]:
    if row.button is not None:
        return {"press": row.text or ""}
    if row.phone is not None:
        return {"contact": row.phone}
    if row.voice is not None:  # the provider's media id, and what was heard (replayed without the audio)
        return {"voice": row.voice, "heard": row.text} if row.text else {"voice": row.voice}
    return {"user": row.text or ""}
