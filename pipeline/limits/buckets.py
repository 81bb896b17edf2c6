"""A token bucket on aiolimiter's leaky bucket: clocked by an injected clock (exact
unit tests), with waits computed rather than slept, refunds, and the server's view
of what is left taken as a ceiling. The pipeline's partner and key limits are made
of these (`pipeline.limits.ratelimit`)."""

from __future__ import annotations

from collections.abc import Callable

from aiolimiter import AsyncLimiter

Clock = Callable[[], float]


class Bucket(AsyncLimiter):
    """aiolimiter's leaky bucket with an injected clock and a few exact queries.

    `level` is what is in the bucket; `capacity - level` is available. A charge
    bigger than what is available is allowed once the bucket is empty enough
    for it to fit, or, if it is bigger than the whole bucket, once the bucket
    is empty: the bucket then runs a debt that the leak pays back.
    """

    __slots__ = ("_clock",)

    def __init__(self, capacity: float, rate_per_s: float, clock: Clock) -> None:
        super().__init__(max_rate=capacity, time_period=capacity / rate_per_s)
        self._clock = clock
        self._last_check = clock()

    def _leak(self) -> None:
        # The parent leaks by the event loop's clock; ours is injected.
        now = self._clock()
        if self._level:
            self._level = max(self._level - (now - self._last_check) * self._rate_per_sec, 0.0)
        self._last_check = now

    @property
    def capacity(self) -> float:
        return self.max_rate

    @property
    def rate_per_s(self) -> float:
        return self._rate_per_sec

    def reconfigure(self, capacity: float, rate_per_s: float) -> None:
        self._leak()
        self.max_rate = capacity
        self.time_period = capacity / rate_per_s
        self._rate_per_sec = rate_per_s

    def available(self) -> float:
        self._leak()
        return self.max_rate - self._level

    def wait_time(self, amount: float, reserve: float = 0.0) -> float:
        """Seconds until `amount` may be charged leaving `reserve` unused (0: now).

        What cannot fit beside the reserve waits for an empty bucket.
        """
        self._leak()
        fits = min(amount + reserve, self.max_rate)
        excess = self._level + fits - self.max_rate
        return 0.0 if excess <= 1e-9 else excess / self._rate_per_sec

    def consume(self, amount: float) -> None:
        self._leak()
        self._level += amount

    def refund(self, amount: float) -> None:
        self._leak()
        self._level = max(0.0, self._level - amount)

    def set_available(self, available: float) -> None:
        self._leak()
        self._level = min(self.max_rate, max(0.0, self.max_rate - available))

    def tighten_to(self, remaining: float) -> None:
        """Never believe more is left than the server says."""
        self._leak()
        self._level = max(self._level, self.max_rate - remaining)
