"""Rate limits: per-partner RPM/TPM and the upstream key's RPM/ITPM/OTPM.

Built on aiolimiter's leaky bucket, with the clock injected so the arithmetic
is testable to the token. Nothing here sleeps: the dispatcher asks how long a
request would have to wait (`Limiter.wait`), dispatches only at zero, and
reports back what really happened (`settle`, `observe`, `pause`).

Staying in step with Claude, whose limits are per organisation and shared by
every worker (and any other application) using a key:

- Each worker keeps a *view* of its part of each key's bucket: the key's
  capacity and refill times its share (1/N with N workers, from the consumer
  group), so N workers together never plan to spend more than the key has.
- Every response's ``anthropic-ratelimit-*-remaining`` header brings the view
  in step: this worker counts on its share of what is left. While Claude
  reports plenty left, the view believes it both ways (a lone busy worker
  borrows what idle ones leave); otherwise it only tightens, so consumption by
  anyone else shows up within one response. The capacity is learned from the
  headers too (the API may enforce 60 RPM as a burst of one per second).
- The view keeps a small reserve (at least one request): we never send at the
  instant Claude's bucket refills, where milliseconds of skew make a 429.
- A 429 pauses the whole key until its ``retry-after``, then one request
  probes before the rest follow.
- Until a key's limits are known (none configured, no response yet), one
  request at a time probes it, instead of a burst that could be refused.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from pipeline.limits.buckets import Bucket, Clock
from pipeline.limits.circuit import Circuit
from pipeline.partners import Partner

RESOURCES = ("requests", "input_tokens", "output_tokens")
_HEADER = {"requests": "requests", "input_tokens": "input-tokens", "output_tokens": "output-tokens"}


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


@functools.lru_cache(maxsize=1024)
def key_id(api_key: str) -> str:
    """A stable, non-secret name for an API key (logs, metrics, limiter state);
    asked for at every call, so remembered for the keys in use."""
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


#: How far our clock and Claude's may disagree about when a token refilled
#: (transit, scheduling). The view keeps this much refill (at least one
#: request) in reserve, so we never send at the exact instant the server's
#: bucket reaches one token, which a few milliseconds of skew turn into a 429.
#: A reserve is a level, not a rate: in steady state it costs no throughput.
SKEW_S = 0.05


class _Resource:
    """One resource (requests, input or output tokens) of one key, as this worker sees it.

    The view is this worker's part of the server's bucket: capacity and refill
    are the key's times this worker's share (1/N of N workers), so N workers
    together never plan to spend more than the key has. Every response brings
    it in step: this worker may count on its share of what Claude says is
    left. While Claude reports plenty left (nobody else is pressing), the view
    takes that at face value, so a lone busy worker borrows what idle ones do
    not use; otherwise it only ever tightens.
    """

    def __init__(self, limit: int | None, clock: Clock, share: float, unit: bool) -> None:
        self._unit = unit  # counts requests (a reserve of at least one), not tokens
        self._clock = clock
        self.limit = limit
        self.capacity_seen = 0.0  # the fullest the server has reported its bucket
        self.view: Bucket | None = None
        if limit:
            self.view = Bucket(float(limit) * share, limit / 60.0 * share, clock)
        self._share = share

    @property
    def known(self) -> bool:
        return self.view is not None

    @property
    def capacity(self) -> float:
        """The server bucket's capacity: the limit, or less if Claude showed less."""
        if not self.limit:
            return 0.0
        return (
            min(float(self.limit), self.capacity_seen) if self.capacity_seen else float(self.limit)
        )

    def set_share(self, share: float) -> None:
        self._share = share
        if self.view is not None and self.limit:
            self.view.reconfigure(max(1.0, self.capacity * share), self.limit / 60.0 * share)

    def reserve(self, headroom: bool = False) -> float:
        if self.view is None:
            return 0.0
        floor = 1.0 if self._unit else 0.0
        skew = min(max(floor, self.view.rate_per_s * SKEW_S), self.view.capacity / 2)
        if headroom and self._unit and self.view.capacity >= 4:
            # room for a couple of light partners arriving at once
            return skew + min(2.0, self.view.capacity / 5)
        return skew

    def observe(
        self, limit: int | None, remaining: float, unseen_left: float, slack: float
    ) -> None:
        """`remaining` is what Claude said; `unseen_left` is that minus what we
        sent since, which the header may not count yet."""
        if limit and limit != self.limit:
            self.limit = limit
            self.view = Bucket(float(limit) * self._share, limit / 60.0 * self._share, self._clock)
        if self.view is None:
            return
        # The bucket holds at least what Claude ever said was left. (Not
        # remaining + this request's charge: the header is written when the
        # response is, and the bucket has refilled meanwhile.)
        seen = max(self.capacity_seen, remaining)
        if seen != self.capacity_seen:
            self.capacity_seen = seen
            self.set_share(self._share)
        mine = unseen_left * self._share
        if remaining >= slack * self.capacity:
            self.view.set_available(mine)  # plenty left: believe it, both ways
        else:
            self.view.tighten_to(mine)


@dataclass
class KeyState:
    resources: dict[str, _Resource]
    paused_until: float = 0.0
    probed: bool = False  # a response has told us this key's limits
    #: Claude refused the key itself (401/403): (why, until when).
    refused: tuple[str, float] | None = None
    #: Our requests on this key not answered yet, by dispatch number.
    pending: dict[int, Cost] = field(default_factory=dict)
    next_seq: int = 0
    #: Open while the upstream is down (see pipeline/limits/circuit.py).
    circuit: Circuit = field(default_factory=Circuit)

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    #: The sums of `pending` (input tokens, output tokens), kept as it changes.
    pending_tokens: list[int] = field(default_factory=lambda: [0, 0])

    def send(self, cost: Cost) -> int:
        """Number a dispatch and count it as pending."""
        seq = self.next_seq
        self.next_seq += 1
        self.pending[seq] = cost
        self.pending_tokens[0] += cost.input_tokens
        self.pending_tokens[1] += cost.output_tokens
        return seq

    def answer(self, seq: int) -> None:
        cost = self.pending.pop(seq, None)
        if cost is not None:
            self.pending_tokens[0] -= cost.input_tokens
            self.pending_tokens[1] -= cost.output_tokens

    def sent_after(self, seq: int) -> Cost:
        """What we sent after request `seq`: a header written for `seq` may not
        count it yet, so it comes off what that header says is left. `pending`
        is in dispatch order: this walks only the requests sent before `seq`
        that are still pending (few: answers come back about in order), not
        every request in flight."""
        before_in = before_out = before = 0
        for s, c in self.pending.items():
            if s > seq:
                break
            before_in += c.input_tokens
            before_out += c.output_tokens
            before += 1
        return Cost(
            self.pending_tokens[0] - before_in,
            self.pending_tokens[1] - before_out,
            requests=len(self.pending) - before,
        )


@dataclass
class _PartnerBuckets:
    config: tuple[int | None, int | None, float]
    rpm: Bucket | None
    tpm: Bucket | None


class Throttle(StrEnum):
    """What holds a request back (the `partner throttled` log line's `reason`)."""

    PARTNER_RPM = "partner_rpm"
    PARTNER_TPM = "partner_tpm"
    BUDGET_PENDING = "budget_pending"  # requests in flight may still fit the budget
    KEY_REQUESTS = "key_requests"
    KEY_INPUT_TOKENS = "key_input_tokens"
    KEY_OUTPUT_TOKENS = "key_output_tokens"
    PAUSED = "paused"  # a 429 paused the key
    PROBING = "probing"  # one request learns the key's limits first
    CIRCUIT_OPEN = "circuit_open"  # the upstream is down: one probe per backoff step

    @property
    def scope(self) -> str:
        """Whose limit it is, for a person reading the log."""
        if self in (Throttle.PARTNER_RPM, Throttle.PARTNER_TPM):
            return "its own limit"
        if self is Throttle.BUDGET_PENDING:
            return "its budget"
        if self is Throttle.PAUSED:
            return "a 429 pause"
        if self is Throttle.CIRCUIT_OPEN:
            return "an upstream outage"
        return "the upstream key's limit"


_KEY_THROTTLE = {
    "requests": Throttle.KEY_REQUESTS,
    "input_tokens": Throttle.KEY_INPUT_TOKENS,
    "output_tokens": Throttle.KEY_OUTPUT_TOKENS,
}


@dataclass(frozen=True)
class Verdict:
    wait_s: float
    reason: Throttle | None = None

    @property
    def go(self) -> bool:
        return self.wait_s <= 0.0


GO = Verdict(0.0)


def _share_bucket(limit: int | None, share: float, clock: Clock) -> Bucket | None:
    """A per-minute limit's bucket for `share` of it (at least one unit)."""
    if not limit:
        return None
    return Bucket(max(1.0, limit * share), limit / 60.0 * share, clock)


@dataclass
class Limiter:
    """Every bucket the dispatcher consults before sending a request."""

    clock: Clock = time.monotonic
    #: Upstream limits per resource for every key (None: learn from headers).
    upstream: Mapping[str, int | None] = field(default_factory=dict)
    #: While Claude reports at least this fraction of a key's bucket left, a
    #: worker's view believes it both ways (and so borrows what others leave).
    slack: float = 0.5
    share: float = 1.0
    #: This worker's part of a partner's RPM and TPM: the fraction of the
    #: partner's request partitions it owns (keys are random request_ids, so a
    #: partner's traffic spreads evenly over them). N workers then give a partner
    #: its limit, not N times it.
    partner_share: Callable[[str], float] = field(default=lambda partner_id: 1.0)
    _keys: dict[str, KeyState] = field(default_factory=dict)
    _partners: dict[str, _PartnerBuckets] = field(default_factory=dict)

    # -- state ------------------------------------------------------------------

    def key(self, kid: str) -> KeyState:
        state = self._keys.get(kid)
        if state is None:
            state = KeyState(
                {
                    r: _Resource(self.upstream.get(r), self.clock, self.share, r == "requests")
                    for r in RESOURCES
                },
                circuit=Circuit(self.clock),
            )
            # Configured limits are enough to start; otherwise probe until a response.
            state.probed = any(res.known for res in state.resources.values())
            self._keys[kid] = state
        return state

    def _partner(self, partner: Partner) -> _PartnerBuckets:
        share = min(1.0, max(self.partner_share(partner.partner_id), 0.01))
        config = (partner.rpm, partner.tpm, share)
        buckets = self._partners.get(partner.partner_id)
        if buckets is not None and buckets.config[:2] == config[:2] and buckets.config != config:
            # the same limits, another share (a rebalance): keep what was used
            for bucket, limit in ((buckets.rpm, partner.rpm), (buckets.tpm, partner.tpm)):
                if bucket is not None and limit:
                    bucket.reconfigure(max(1.0, limit * share), limit / 60.0 * share)
            buckets.config = config
        elif buckets is None or buckets.config != config:
            buckets = _PartnerBuckets(
                config,
                _share_bucket(partner.rpm, share, self.clock),
                _share_bucket(partner.tpm, share, self.clock),
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
        verdict = self.partner_wait(partner, cost)
        return verdict if not verdict.go else self.key_wait(kid, cost)

    def partner_wait(self, partner: Partner, cost: Cost) -> Verdict:
        """The partner's own limits (RPM, TPM)."""
        buckets = self._partner(partner)
        if buckets.rpm is not None and (w := buckets.rpm.wait_time(1)) > 0:
            return Verdict(w, Throttle.PARTNER_RPM)
        if buckets.tpm is not None and (w := buckets.tpm.wait_time(cost.tokens)) > 0:
            return Verdict(w, Throttle.PARTNER_TPM)
        return GO

    def key_wait(self, kid: str, cost: Cost, headroom: bool = False) -> Verdict:
        """The upstream key's limits, pause and probe, shared by its partners.

        With `headroom`, the request also leaves a request or two of the bucket
        for partners that just became active: a backlog then never takes the last
        token, and a light partner's request goes out at once, not after the
        next refill. (A level, not a rate: it costs no throughput.)
        """
        state = self.key(kid)
        now = self.clock()
        outage = state.circuit.wait()
        if outage > 0:
            return Verdict(outage, Throttle.CIRCUIT_OPEN)
        if state.paused_until > now:
            return Verdict(state.paused_until - now, Throttle.PAUSED)
        if not state.probed and state.in_flight >= 1:
            return Verdict(0.05, Throttle.PROBING)
        worst = GO
        for name, res in state.resources.items():
            if res.view is None:
                continue
            w = res.view.wait_time(cost.of(name), reserve=res.reserve(headroom))
            if w > worst.wait_s:
                worst = Verdict(w, _KEY_THROTTLE[name])
        return worst

    def consume(self, partner: Partner, kid: str, cost: Cost) -> int:
        """Charge a dispatch; returns its number, for `observe` and `settle`."""
        buckets = self._partner(partner)
        if buckets.rpm is not None:
            buckets.rpm.consume(1)
        if buckets.tpm is not None:
            buckets.tpm.consume(cost.tokens)
        state = self.key(kid)
        state.circuit.sent()
        seq = state.send(cost)
        for name, res in state.resources.items():
            if res.view is not None:
                res.view.consume(cost.of(name))
        return seq

    def settle(
        self, partner: Partner, kid: str, seq: int, charged: Cost, actual: Cost | None
    ) -> None:
        """The call is over: give back what it did not use (all of it if refused)."""
        state = self.key(kid)
        state.answer(seq)
        used = actual or Cost(0, 0, requests=0)
        buckets = self._partner(partner)
        if buckets.rpm is not None and used.requests == 0:
            buckets.rpm.refund(1)
        if buckets.tpm is not None and charged.tokens > used.tokens:
            buckets.tpm.refund(charged.tokens - used.tokens)
        for name, res in state.resources.items():
            extra = charged.of(name) - used.of(name)
            if res.view is not None and extra > 0:
                res.view.refund(extra)

    def observe(
        self, kid: str, headers: Mapping[str, str], charged: Cost, seq: int = -1
    ) -> dict[str, float]:
        """Bring the key's view in step with Claude's rate-limit headers.

        Returns the remaining values seen, by resource (for metrics).
        """
        state = self.key(kid)
        later = state.sent_after(seq) if seq >= 0 else Cost(0, 0, requests=0)
        seen: dict[str, float] = {}
        for name, res in state.resources.items():
            prefix = f"anthropic-ratelimit-{_HEADER[name]}"
            remaining = _number(headers.get(f"{prefix}-remaining"))
            if remaining is None:
                continue
            limit = _number(headers.get(f"{prefix}-limit"))
            res.observe(
                int(limit) if limit else None,
                remaining,
                max(0.0, remaining - later.of(name)),
                self.slack,
            )
            seen[name] = remaining
        # One answer is all a probe waits for: with headers we now know the
        # limits; without (a gateway that sends none) there is nothing to learn.
        state.probed = True
        return seen

    def outage(self, kid: str) -> bool:
        """The upstream failed as in an outage (5xx, timeout, connection). True if
        that opened the key's circuit."""
        return self.key(kid).circuit.failed()

    def answered(self, kid: str) -> bool:
        """The upstream answered (success or a 4xx). True if that closed the circuit."""
        return self.key(kid).circuit.succeeded()

    def circuit_open(self, kid: str) -> bool:
        return self.key(kid).circuit.open

    def refuse_key(self, kid: str, reason: str, seconds: float) -> None:
        """Claude refused the key itself (401/403): fail its requests fast for a while."""
        state = self.key(kid)
        state.refused = (reason, self.clock() + seconds)

    def key_refused(self, kid: str) -> str | None:
        state = self._keys.get(kid)
        if state is None or state.refused is None:
            return None
        reason, until = state.refused
        if self.clock() >= until:
            state.refused = None
            return None
        return reason

    def pause(self, kid: str, seconds: float) -> None:
        """Claude said 429: nobody sends on this key for `seconds`, and then one
        request probes before the rest follow: the pause let our view refill,
        but not necessarily the server's bucket, which others share."""
        state = self.key(kid)
        state.paused_until = max(state.paused_until, self.clock() + max(seconds, 0.0))
        state.probed = False


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
