"""The providers' documented send limits, as data for the Redis-backed limiter in ``bot``.

Every API call counts, so a reply split into several parts (long text, text before an interactive message)
uses one token per part.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from channels.base import ChannelName


@dataclass(frozen=True)
class RateLimit:
    scope: Literal["chat", "account"]  # per recipient chat, or per bot / phone number / community
    count: int
    per_seconds: float


LIMITS: Mapping[ChannelName, tuple[RateLimit, ...]] = {
    # core.telegram.org/bots/faq: about 1 message/s in one chat, about 30 messages/s overall
    "telegram": (RateLimit("chat", 1, 1.0), RateLimit("account", 30, 1.0)),
    # Cloud API default throughput: 80 messages/s per business phone number
    "whatsapp": (RateLimit("account", 80, 1.0),),
    # VK API: 20 requests/s with a community token
    "vk": (RateLimit("account", 20, 1.0),),
    "web": (),
    "terminal": (),
}
