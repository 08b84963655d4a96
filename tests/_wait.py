"""Waiting for a condition on a loaded machine: poll with a generous deadline, never sleep a fixed time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def until(condition: Callable[[], bool | Awaitable[bool]], within: float = 30.0, every: float = 0.02) -> bool:
    """Whether ``condition`` (a function, or a coroutine function) became true within ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        outcome = condition()
        if outcome if isinstance(outcome, bool) else await outcome:
            return True
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(every)
