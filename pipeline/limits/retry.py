"""The one retry policy: capped exponential backoff with full jitter, honouring retry-after."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_s: float = 0.5
    cap_s: float = 30.0

    def backoff(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2^(n-1))]."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** max(0, attempt - 1))
        return float(rng()) * ceiling

    def delay(
        self,
        attempt: int,
        retry_after: float | None,
        rng: Callable[[], float] = random.random,
    ) -> float:
        """Seconds before the next attempt: never sooner than Claude asked."""
        return max(self.backoff(attempt, rng), retry_after or 0.0)

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts
