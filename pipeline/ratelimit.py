"""Rate limits: per-partner RPM/TPM and the upstream key's RPM/ITPM/OTPM.

Built on aiolimiter's leaky bucket, with the clock injected so the arithmetic
is testable to the token. Nothing here sleeps: the dispatcher asks how long a
request would have to wait (`Limiter.wait`), dispatches only at zero, and
reports back what really happened (`settle`, `observe`, `pause`).

Staying in step with Claude, whose limits are per organisation and shared by
every worker (and any other application) using a key:

- A *view* of the server's bucket per key and resource: it refills at the
  limit's rate, drops with each of our dispatches, and is tightened by every
  response's ``anthropic-ratelimit-*-remaining`` header, so consumption by
  anyone else shows up within one response. Its capacity is learned from the
  headers too (the API may enforce 60 RPM as a burst of 1 per second).
- A *share* bucket: this worker's fair part of the refill (1/N of the limit
  with N workers). Two workers each trusting the full refill would collide on
  every token; each taking its share does not. A worker may borrow beyond its
  share while the server's bucket shows slack, so capacity nobody else uses is
  never wasted.
- A 429 pauses the whole key until its ``retry-after`` (not just the request).
- Until a key's limits are known (no configured limit, no response yet), one
  request at a time probes it, instead of a burst that could be refused.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter

from pipeline.partners import Partner

Clock = Callable[[], float]

RESOURCES = ("requests", "input_tokens", "output_tokens")
_HEADER = {"requests": "requests", "input_tokens": "input-tokens", "output_tokens": "output-tokens"}


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

    def wait_time(self, amount: float) -> float:
        """Seconds until `amount` may be charged (0: now)."""
        self._leak()
        fits = min(amount, self.max_rate)
        excess = self._level + fits - self.max_rate
        return 0.0 if excess <= 1e-9 else excess / self._rate_per_sec

    def consume(self, amount: float) -> None:
        self._leak()
        self._level += amount

    def refund(self, amount: float) -> None:
        self._leak()
        self._level = max(0.0, self._level - amount)

    def tighten_to(self, remaining: float) -> None:
        """Never believe more is left than the server says."""
        self._leak()
        self._level = max(self._level, self.max_rate - remaining)


@dataclass(frozen=True)
class Cost:
    """What a request consumes: one request, its input tokens, its output tokens."""

    input_tokens: int
    output_tokens: int
    requests: int = 1

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def of(self, resource: str) -> int:
        return int(getattr(self, resource))


def key_id(api_key: str) -> str:
    """A stable, non-secret name for an API key (logs, metrics, limiter state)."""
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


class _Resource:
    """One resource (requests, input or output tokens) of one key."""

    def __init__(self, limit: int | None, clock: Clock, share: float) -> None:
        self.limit = limit
        self.capacity_seen = 0.0  # the fullest the server has reported its bucket
        self._clock = clock
        self.server: Bucket | None = None
        self.share: Bucket | None = None
        if limit:
            self._build(limit, float(limit), share)

    def _build(self, limit: int, capacity: float, share: float) -> None:
        rate = limit / 60.0
        self.server = Bucket(capacity, rate, self._clock)
        self.share = Bucket(max(1.0, capacity * share), max(rate * share, 1e-9), self._clock)

    @property
    def known(self) -> bool:
        return self.server is not None

    def set_share(self, share: float) -> None:
        if self.server is not None and self.share is not None and self.limit:
            rate = self.limit / 60.0
            self.share.reconfigure(max(1.0, self.server.capacity * share), max(rate * share, 1e-9))

    def observe(self, limit: int | None, remaining: float, charged: float, share: float) -> None:
        if limit and limit != self.limit:
            self.limit = limit
            self._build(limit, float(limit), share)
        if self.server is None or self.share is None or not self.limit:
            return
        # remaining is reported after this request's own charge: the bucket
        # holds at least remaining + charged when it is full.
        self.capacity_seen = max(self.capacity_seen, remaining + charged)
        capacity = min(float(self.limit), max(self.capacity_seen, 1.0))
        if capacity < self.server.capacity:
            self.server.reconfigure(capacity, self.limit / 60.0)
            self.set_share(share)
        self.server.tighten_to(remaining)


@dataclass
class KeyState:
    resources: dict[str, _Resource]
    paused_until: float = 0.0
    in_flight: int = 0
    probed: bool = False  # a response has told us this key's limits


@dataclass
class _PartnerBuckets:
    config: tuple[int | None, int | None]
    rpm: Bucket | None
    tpm: Bucket | None


@dataclass(frozen=True)
class Verdict:
    wait_s: float
    reason: str | None = None  # why not now: partner_rpm, partner_tpm, key_*, paused, probing

    @property
    def go(self) -> bool:
        return self.wait_s <= 0.0


GO = Verdict(0.0)


@dataclass
class Limiter:
    """Every bucket the dispatcher consults before sending a request."""

    clock: Clock = time.monotonic
    #: Upstream limits per resource for every key (None: learn from headers).
    upstream: Mapping[str, int | None] = field(default_factory=dict)
    #: Borrow beyond this worker's share while the server bucket has this much slack.
    slack: float = 0.1
    share: float = 1.0
    _keys: dict[str, KeyState] = field(default_factory=dict)
    _partners: dict[str, _PartnerBuckets] = field(default_factory=dict)

    # -- state ------------------------------------------------------------------

    def key(self, kid: str) -> KeyState:
        state = self._keys.get(kid)
        if state is None:
            state = KeyState(
                {r: _Resource(self.upstream.get(r), self.clock, self.share) for r in RESOURCES}
            )
            # Configured limits are enough to start; otherwise probe until a response.
            state.probed = any(res.known for res in state.resources.values())
            self._keys[kid] = state
        return state

    def _partner(self, partner: Partner) -> _PartnerBuckets:
        config = (partner.rpm, partner.tpm)
        buckets = self._partners.get(partner.partner_id)
        if buckets is None or buckets.config != config:
            buckets = _PartnerBuckets(
                config,
                Bucket(partner.rpm, partner.rpm / 60.0, self.clock) if partner.rpm else None,
                Bucket(partner.tpm, partner.tpm / 60.0, self.clock) if partner.tpm else None,
            )
            self._partners[partner.partner_id] = buckets
        return buckets

    def set_share(self, share: float) -> None:
        """This worker's part of each key's limit (1/N for N workers)."""
        self.share = min(1.0, max(share, 0.01))
        for state in self._keys.values():
            for res in state.resources.values():
                res.set_share(self.share)

    # -- decisions ----------------------------------------------------------------

    def wait(self, partner: Partner, kid: str, cost: Cost) -> Verdict:
        """How long this request must wait, and the binding reason."""
        buckets = self._partner(partner)
        if buckets.rpm is not None and (w := buckets.rpm.wait_time(1)) > 0:
            return Verdict(w, "partner_rpm")
        if buckets.tpm is not None and (w := buckets.tpm.wait_time(cost.tokens)) > 0:
            return Verdict(w, "partner_tpm")
        state = self.key(kid)
        now = self.clock()
        if state.paused_until > now:
            return Verdict(state.paused_until - now, "paused")
        if not state.probed and state.in_flight >= 1:
            return Verdict(0.05, "probing")
        worst = GO
        for name, res in state.resources.items():
            if res.server is None or res.share is None:
                continue
            amount = cost.of(name)
            w = res.server.wait_time(amount)
            if w <= 0 and res.share.wait_time(amount) > 0:
                # beyond our share: only while the server bucket has slack left
                slack = res.server.available() - amount
                if slack < self.slack * res.server.capacity:
                    w = res.share.wait_time(amount)
            if w > worst.wait_s:
                worst = Verdict(w, f"key_{name}")
        return worst

    def consume(self, partner: Partner, kid: str, cost: Cost) -> None:
        buckets = self._partner(partner)
        if buckets.rpm is not None:
            buckets.rpm.consume(1)
        if buckets.tpm is not None:
            buckets.tpm.consume(cost.tokens)
        state = self.key(kid)
        state.in_flight += 1
        for name, res in state.resources.items():
            if res.server is not None and res.share is not None:
                res.server.consume(cost.of(name))
                res.share.consume(cost.of(name))

    def settle(self, partner: Partner, kid: str, charged: Cost, actual: Cost | None) -> None:
        """The call is over: give back what it did not use (all of it if refused)."""
        state = self.key(kid)
        state.in_flight = max(0, state.in_flight - 1)
        used = actual or Cost(0, 0, requests=0)
        buckets = self._partner(partner)
        if buckets.rpm is not None and used.requests == 0:
            buckets.rpm.refund(1)
        if buckets.tpm is not None and charged.tokens > used.tokens:
            buckets.tpm.refund(charged.tokens - used.tokens)
        for name, res in state.resources.items():
            extra = charged.of(name) - used.of(name)
            if extra > 0 and res.server is not None and res.share is not None:
                res.server.refund(extra)
                res.share.refund(extra)

    def observe(self, kid: str, headers: Mapping[str, str], charged: Cost) -> dict[str, float]:
        """Bring the key's view in step with Claude's rate-limit headers.

        Returns the remaining values seen, by resource (for metrics).
        """
        state = self.key(kid)
        seen: dict[str, float] = {}
        for name, res in state.resources.items():
            prefix = f"anthropic-ratelimit-{_HEADER[name]}"
            remaining = _number(headers.get(f"{prefix}-remaining"))
            if remaining is None:
                continue
            limit = _number(headers.get(f"{prefix}-limit"))
            res.observe(int(limit) if limit else None, remaining, charged.of(name), self.share)
            seen[name] = remaining
        # One answer is all a probe waits for: with headers we now know the
        # limits; without (a gateway that sends none) there is nothing to learn.
        state.probed = True
        return seen

    def pause(self, kid: str, seconds: float) -> None:
        """Claude said 429: nobody sends on this key for `seconds`."""
        state = self.key(kid)
        state.paused_until = max(state.paused_until, self.clock() + max(seconds, 0.0))


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
