"""Per-key rate limits as the real API applies them: continuously refilled buckets.

Pure arithmetic over an injected clock, so tests can check remaining and reset
values to the token. One `KeyLimits` per API key holds three buckets (requests,
input tokens, output tokens); a limit of 0 means that resource is unlimited.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

Clock = Callable[[], float]


class TokenBucket:
    """Capacity `capacity`, refilled at `rate` per second, never above capacity.

    The level may go negative: output tokens are charged as they are produced,
    after admission, and a debt must be paid back before the next admission.
    """

    __slots__ = ("capacity", "level", "limit", "rate", "updated")

    def __init__(self, limit: int, capacity: float, now: float) -> None:
        self.limit = limit
        self.capacity = capacity
        self.rate = limit / 60.0
        self.level = capacity
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def remaining(self, now: float) -> int:
        self.refill(now)
        return max(0, math.floor(self.level))

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` is available (0 if it is now)."""
        self.refill(now)
        deficit = amount - self.level
        return 0.0 if deficit <= 0 else deficit / self.rate

    def seconds_to_full(self, now: float) -> float:
        self.refill(now)
        return (self.capacity - self.level) / self.rate

    def take(self, amount: float, now: float) -> None:
        self.refill(now)
        self.level -= amount


@dataclass(frozen=True)
class Rejection:
    """Why a request was refused and when to retry (whole seconds, at least 1)."""

    resource: str  # "requests", "input_tokens" or "output_tokens"
    limit: int
    retry_after: int
    message: str


_LIMIT_NAMES = {
    "requests": "requests per minute",
    "input_tokens": "input tokens per minute",
    "output_tokens": "output tokens per minute",
}


class KeyLimits:
    """The three buckets of one API key."""

    def __init__(
        self, rpm: int, itpm: int, otpm: int, burst: int | None, clock: Clock, wall: Clock
    ) -> None:
        self._clock = clock
        self._wall = wall
        now = clock()
        # `--burst N` enforces 60 RPM as, say, 1 request per second: every
        # bucket keeps the same refill rate and shrinks its capacity by N/rpm.
        scale = 1.0 if burst is None or rpm == 0 else min(1.0, burst / rpm)
        self.buckets: dict[str, TokenBucket] = {}
        for name, limit in (("requests", rpm), ("input_tokens", itpm), ("output_tokens", otpm)):
            if limit > 0:
                capacity = max(1.0, limit * scale)
                self.buckets[name] = TokenBucket(limit, capacity, now)

    def admit(self, input_tokens: int) -> Rejection | None:
        """Charge one request and its input tokens, or say which limit refuses it.

        Output tokens are not known yet: admission needs a non-negative output
        bucket; `charge_output` bills them when they are produced.
        """
        now = self._clock()
        needs = {"requests": 1.0, "input_tokens": float(input_tokens), "output_tokens": 1.0}
        worst: tuple[float, str] | None = None
        for name, bucket in self.buckets.items():
            amount = needs[name]
            # A request larger than the whole bucket waits for a full bucket;
            # it will be refused again, as on the real API.
            wait = bucket.wait_for(min(amount, bucket.capacity), now)
            if amount > bucket.capacity or wait > 0:
                wait = max(wait, 1e-9)
                if worst is None or wait > worst[0]:
                    worst = (wait, name)
        if worst is not None:
            wait, name = worst
            bucket = self.buckets[name]
            retry_after = max(1, math.ceil(wait))
            return Rejection(
                resource=name,
                limit=bucket.limit,
                retry_after=retry_after,
                message=(
                    f"This request would exceed your organization's rate limit of "
                    f"{bucket.limit:,} {_LIMIT_NAMES[name]}. Retry after {retry_after} s."
                ),
            )
        for name, bucket in self.buckets.items():
            if name != "output_tokens":
                bucket.take(needs[name], now)
        return None

    def charge_output(self, output_tokens: int) -> None:
        bucket = self.buckets.get("output_tokens")
        if bucket is not None and output_tokens:
            bucket.take(output_tokens, self._clock())

    def headers(self) -> dict[str, str]:
        """The `anthropic-ratelimit-*` headers describing the buckets right now."""
        now = self._clock()
        wall = self._wall()
        out: dict[str, str] = {}
        tightest: tuple[float, TokenBucket] | None = None
        for name, bucket in self.buckets.items():
            prefix = "anthropic-ratelimit-" + name.replace("_", "-")
            remaining = bucket.remaining(now)
            out[prefix + "-limit"] = str(bucket.limit)
            out[prefix + "-remaining"] = str(remaining)
            out[prefix + "-reset"] = rfc3339(wall + bucket.seconds_to_full(now))
            if name != "requests":
                fraction = remaining / bucket.capacity
                if tightest is None or fraction < tightest[0]:
                    tightest = (fraction, bucket)
        if tightest is not None:
            # `tokens-*` reports whichever token limit is most restrictive now.
            bucket = tightest[1]
            out["anthropic-ratelimit-tokens-limit"] = str(bucket.limit)
            out["anthropic-ratelimit-tokens-remaining"] = str(bucket.remaining(now))
            out["anthropic-ratelimit-tokens-reset"] = rfc3339(wall + bucket.seconds_to_full(now))
        return out


def rfc3339(ts: float) -> str:
    """RFC 3339 UTC with whole seconds, the way the API writes reset times."""
    return _rfc3339_second(math.ceil(ts))


@functools.lru_cache(maxsize=1024)
def _rfc3339_second(second: int) -> str:
    # Every response carries several reset times that fall on a handful of
    # distinct seconds: formatting each second once is a measurable win.
    return datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
