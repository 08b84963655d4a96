"""The one backoff policy: exponential, capped, with full jitter above a floor.

Full jitter spreads the retries of many clients that failed together (a provider outage, a Redis restart);
the floor keeps a retry from landing right away (pure full jitter draws near 0 s often enough that a message
could burn through its retries within seconds of an outage).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base: float  # the ceiling of the first retry's delay, seconds
    cap: float  # no delay is longer
    floor: float = 0.0  # no delay is shorter

    def delay(self, attempt: int) -> float:
        """The delay before the ``attempt``-th retry (0-based): uniform between the floor and the ceiling."""
        ceiling = max(self.floor, min(self.cap, self.base * 2 ** min(attempt, 32)))
        return random.uniform(self.floor, ceiling)
