"""One attempt at Claude: the checks just before, the call, and settling what it held.

A dispatched request holds a charge on the rate limits and, for a partner with a
budget, a reservation of its worst case. Whatever the attempt ends in, both are
settled here: to what Claude reports it used, to nothing if Claude refused it,
or, if our own code failed after the call may have reached Claude, the budget
keeps the worst case (a budget must never be overrun by a bug). The result says
what happens next: `Served`, `Retry` after a delay, or `Failed`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.errors import (
    DeadlineExpired,
    NotSent,
    PartnerDisabled,
    RequestError,
    SecretError,
    Stage,
    UnknownPartner,
    UpstreamError,
    UpstreamExhausted,
    UpstreamRejected,
    internal,
)
from pipeline.lifecycle.outcomes import result_cost, result_tokens
from pipeline.limits.pricing import PriceTable
from pipeline.limits.ratelimit import Cost, Limiter, key_id
from pipeline.limits.retry import RetryPolicy
from pipeline.ops.metrics import Metrics
from pipeline.partners import Partner, Registry
from pipeline.records import Job
from pipeline.state import BudgetLedger
from pipeline.upstream.claude import UpstreamResult, request_headers
from pipeline.upstream.keys import ApiKeys

log = logging.getLogger("pipeline.lifecycle.attempt")


class Upstream(Protocol):
    """What an attempt needs from Claude (ClaudeClient in production)."""

    async def create(
        self,
        api_key: str,
        params: Mapping[str, Any],
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResult:
        """`body`: `params` already encoded as JSON (a heavy request's, off the loop);
        `headers`: the request's own (its betas, the partner's Workspace)."""


@dataclass(frozen=True)
class Served:
    result: UpstreamResult


@dataclass(frozen=True)
class Retry:
    delay_s: float
    error: UpstreamError


@dataclass(frozen=True)
class Failed:
    error: RequestError


AttemptResult = Served | Retry | Failed

#: Failures that look like the upstream is down (rather than the request at fault).
OUTAGE_CLASSES = frozenset({"5xx", "timeout", "connection"})

#: How long a key Claude refused (401/403) fails its requests fast.
REFUSED_KEY_S = 30.0


def job_fields(job: Job) -> dict[str, object]:
    record = job.record
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "partner": job.partner_id,
        "request_id": job.request_id,
        "attempt": job.attempts,
    }


class Attempts:
    def __init__(
        self,
        *,
        registry: Registry,
        claude: Upstream,
        keys: ApiKeys,
        limiter: Limiter,
        ledger: BudgetLedger | None,
        prices: PriceTable,
        metrics: Metrics,
        policy: RetryPolicy,
        mono: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._registry = registry
        self._claude = claude
        self._keys = keys
        self._limiter = limiter
        self._ledger = ledger
        self._prices = prices
        self._metrics = metrics
        self._policy = policy
        self._mono = mono
        self._wall = wall
        self._rng = rng

    async def run(self, job: Job) -> AttemptResult:
        """One attempt; never raises (a bug ends the request as internal_error)."""
        called = False
        try:
            partner, api_key = self._ready(job)
            called = True
            result = await self._call(job, partner, api_key)
        except RequestError as err:
            self._settle_charge(job, None)
            self._release_budget(job)
            return Failed(err)
        except UpstreamError as err:
            return self._next_step(job, err)
        except NotSent as exc:
            # Nothing reached Claude: nothing is charged, to its limits or the budget.
            self._settle_charge(job, None)
            self._release_budget(job)
            return Failed(internal(Stage.UPSTREAM, exc.__cause__ or exc, log, job_fields(job)))
        except Exception as exc:
            self._settle_charge(
                job, None if not called else Cost(job.admitted.cost.input_tokens, 0)
            )
            if called:
                self._spend_worst_case(job)  # it may have reached Claude: count it
            else:
                self._release_budget(job)
            return Failed(internal(Stage.UPSTREAM, exc, log, job_fields(job)))
        return Served(result)

    def _ready(self, job: Job) -> tuple[Partner, str]:
        """What must hold just before the call; raises the RequestError that ends it."""
        partner = self._registry.get(job.partner_id)
        if partner is None:
            raise UnknownPartner(f"partner {job.partner_id!r} was removed")
        if not partner.enabled:
            raise PartnerDisabled(f"partner {job.partner_id!r} is disabled")
        deadline = job.admitted.deadline_ms
        if deadline is not None and self._wall() * 1000 >= deadline:
            raise DeadlineExpired("deadline passed while queued", attempts=job.attempts)
        try:
            api_key = self._keys.for_attempt(partner, job.progress, int(self._wall() * 1000))
        except SecretError as exc:
            raise UpstreamRejected(
                f"cannot read the upstream API key: {exc}",
                attempts=job.attempts,
                public="the upstream API key for this partner cannot be read now "
                "(the operator is told why)",
            ) from None
        refused = self._limiter.key_refused(key_id(api_key))
        if refused is not None:
            raise UpstreamRejected(refused, attempts=job.attempts)
        return partner, api_key

    async def _call(self, job: Job, partner: Partner, api_key: str) -> UpstreamResult:
        progress = job.progress
        progress.attempts += 1
        kid = key_id(api_key)
        started = self._mono()
        try:
            admitted = job.admitted
            headers = request_headers(admitted.request.get("betas"), partner.workspace_id)
            result = await self._claude.create(
                api_key, admitted.params, body=admitted.body, headers=headers
            )
        except UpstreamError as err:
            self._account(job, started, err.status)
            self._metrics.errors.labels(job.partner_id, err.error_class).inc()
            if err.status == 429:
                self._metrics.rate_limited.labels(job.partner_id).inc()
            self._circuit(kid, job, outage=err.error_class in OUTAGE_CLASSES)
            self._observe(kid, err.headers, job)
            # A 429 was never charged; other failures probably were, minus the output.
            used = None if err.status == 429 else Cost(job.admitted.cost.input_tokens, 0)
            self._settle_charge(job, used)
            self._release_budget(job)
            self._key_trouble(job, kid, err)
            raise
        self._account(job, started, result.status)
        self._circuit(kid, job, outage=False)
        self._observe(kid, result.headers, job)
        self._settle_charge(
            job,
            Cost(result.input_tokens + result.cache_creation_input_tokens, result.output_tokens),
        )
        self._spend(job, result)
        return result

    def _circuit(self, kid: str, job: Job, *, outage: bool) -> None:
        """Tell the key's circuit how the upstream answered; log and show a change."""
        gauge = self._metrics.circuit_open.labels(kid)  # every key in use has a series
        if outage and self._limiter.outage(kid):
            gauge.set(1)
            log.warning(
                "circuit open: the upstream is down, one probe per backoff step",
                extra={**job_fields(job), "key": kid},
            )
        elif not outage and self._limiter.answered(kid):
            gauge.set(0)
            log.info("circuit closed: the upstream answers again", extra={"key": kid})

    def _key_trouble(self, job: Job, kid: str, err: UpstreamError) -> None:
        if err.status in (401, 403):
            # This key is revoked or lacks permission: its partners' requests
            # fail fast for a while; other keys (other partners) carry on.
            self._metrics.key_rejected.labels(job.partner_id).inc()
            reason = f"Claude refused the API key ({err.status})"
            self._limiter.refuse_key(kid, reason, REFUSED_KEY_S)
            log.warning(
                "Claude refused an API key",
                extra={**job_fields(job), "key": kid, "status": err.status},
            )
        if err.status == 429:
            self._limiter.pause(kid, err.retry_after if err.retry_after is not None else 1.0)
            log.warning(
                "429 from Claude: pausing the key",
                extra={
                    **job_fields(job),
                    "key": kid,
                    "retry_after": err.retry_after,
                    "detail": err.message,
                },
            )

    def _next_step(self, job: Job, err: UpstreamError) -> AttemptResult:
        attempts = job.attempts
        if not err.retriable:
            return Failed(
                UpstreamRejected(err.message, attempts=attempts, error_type=err.error_type)
            )
        if self._policy.exhausted(attempts):
            return Failed(
                UpstreamExhausted(
                    f"gave up after {attempts} attempts; last: {err.message}",
                    attempts=attempts,
                    error_type=err.error_type,
                )
            )
        delay = self._policy.delay(attempts, err.retry_after, self._rng)
        deadline = job.admitted.deadline_ms
        if deadline is not None and (self._wall() + delay) * 1000 >= deadline:
            return Failed(
                DeadlineExpired(
                    f"the next attempt (in {delay:.1f} s) would start after the deadline",
                    attempts=attempts,
                )
            )
        return Retry(delay, err)

    # -- settling ------------------------------------------------------------------

    def _account(self, job: Job, started: float, status: int | None) -> None:
        elapsed = self._mono() - started
        job.progress.upstream_s += elapsed
        job.progress.last_status = status
        self._metrics.upstream_duration.labels(job.partner_id).observe(elapsed)

    def _observe(self, kid: str, headers: Mapping[str, str], job: Job) -> None:
        charge = job.progress.charge
        seq = charge.seq if charge is not None else -1
        for resource, remaining in self._limiter.observe(
            kid, headers, job.admitted.cost, seq
        ).items():
            self._metrics.ratelimit_remaining.labels(resource).set(remaining)

    def _settle_charge(self, job: Job, used: Cost | None) -> None:
        charge, job.progress.charge = job.progress.charge, None
        partner = self._registry.get(job.partner_id) or job.admitted.partner
        if charge is not None:
            self._limiter.settle(partner, charge.key_id, charge.seq, charge.cost, used)

    def _release_budget(self, job: Job) -> None:
        reservation, job.progress.reservation = job.progress.reservation, None
        if reservation is not None and self._ledger is not None:
            self._ledger.release(reservation)

    def _spend(self, job: Job, result: UpstreamResult) -> None:
        spend(job, result, self._ledger, self._prices)

    def _spend_worst_case(self, job: Job) -> None:
        reservation, job.progress.reservation = job.progress.reservation, None
        if reservation is not None and self._ledger is not None:
            writes = self._ledger.settle(reservation, reservation.tokens, reservation.usd)
            job.progress.durable.extend(writes)


def spend(
    job: Job, result: UpstreamResult, ledger: BudgetLedger | None, prices: PriceTable
) -> None:
    """Settle the budget a request holds to what its answer really cost; the
    writes that make it durable go with the request's outcome."""
    reservation, job.progress.reservation = job.progress.reservation, None
    if reservation is not None and ledger is not None:
        usd = result_cost(prices, result)
        job.progress.durable.extend(ledger.settle(reservation, result_tokens(result), usd))
