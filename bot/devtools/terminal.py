"""``bookingbot chat``: the terminal channel over the same pipeline a webhook uses.

Reads lines from stdin and prints the conversation on stdout (``> `` marks the customer's lines when stdin is
not a terminal, so a piped transcript reads as a dialog). Buttons print numbered; typing the number or the
label presses one. Diagnostics go to stderr only.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import UTC, datetime

from bot.pipeline import Pipeline
from bot.runtime import Runtime
from bot.settings import Settings
from channels import terminal
from channels.base import ChannelName, InboundMessage, OutButton

CRM_SETTLE_S = 15.0  # how long an ended chat waits for the CRM outbox before leaving the rest to the next run


async def chat(settings: Settings, *, tenant: str, channel: ChannelName, user: str | None, now: datetime | None) -> int:
    runtime = await Runtime.start(settings)
    try:
        runtime.tenant(tenant)
        relay = runtime.start_relay()
        status = await _loop(Pipeline(runtime), tenant, channel, user or f"local-{uuid.uuid4().hex[:8]}", now)
        if not await relay.settle(CRM_SETTLE_S):
            print("CRM: some updates are still queued; `bookingbot worker` or the next chat delivers them",
                  file=sys.stderr)
        return status
    finally:
        await runtime.aclose()


async def _loop(pipeline: Pipeline, tenant: str, channel: ChannelName, user: str, now: datetime | None) -> int:
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {tenant} as {user} (Ctrl-D to quit)", file=sys.stderr)
    buttons: tuple[OutButton, ...] = ()
    counter = 0
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return 0
        line = line.strip()
        if not line:
            continue
        if not interactive:
            print(f"> {line}")
        counter += 1
        text, pressed = terminal.parse_line(line, buttons)
        msg = InboundMessage(
            tenant=tenant, channel=channel, user_id=user, event_id=f"{user}-{counter}", text=text, button=pressed
        )
        turn = await pipeline.handle(msg, now or datetime.now(UTC))
        outbound = turn.outbound
        for out in outbound:
            print(terminal.render(out))
        buttons = tuple(b for out in outbound for b in out.buttons)
