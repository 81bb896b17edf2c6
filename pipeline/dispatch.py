"""The worker's engine: intake, fair queues, bounded concurrency, retries, outcomes.

Kafka-agnostic: records come in through `handle(record, ack)`, outcomes leave
through a `Publisher`, and `ack` is called only after every output record of
an outcome is acknowledged by the broker, so a crash can repeat work but never
lose it (at-least-once). Redeliveries of a record this worker is already
handling, or has just finished, are recognised by their (topic, partition,
offset) and produce no second outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline import tokens
from pipeline.claude import UpstreamResult
from pipeline.errors import (
    AuthFailed,
    DeadlineExpired,
    InvalidRequest,
    PartnerDisabled,
    QuotaExceeded,
    RequestError,
    SecretError,
    UnknownPartner,
    UpstreamError,
    UpstreamExhausted,
    UpstreamRejected,
)
from pipeline.intake import Intake, Rejected, key_request_id
from pipeline.metrics import Metrics
from pipeline.outcomes import Outcome, OutcomeBuilder, fit
from pipeline.partners import Partner, Registry, partner_of_requests_topic
from pipeline.pricing import PriceTable
from pipeline.ratelimit import Cost, Limiter, Verdict, key_id
from pipeline.records import AckFn, Job, OutMessage, SourceRecord
from pipeline.retry import RetryPolicy
from pipeline.scheduler import KeyedFairQueue
from pipeline.schemas import Codec
from pipeline.security import SecretResolver
from pipeline.state import BudgetLedger, ReplayGuard, Seen, wait_all

log = logging.getLogger("pipeline.dispatch")

#: Queue key of a partner whose API key cannot be read (it fails fast).
UNRESOLVED = "unresolved:"

#: How many finished record positions to remember for redelivery detection.
DONE_MEMORY = 100_000


class Publisher(Protocol):
    async def publish(self, messages: list[OutMessage]) -> None:
        """Return once the broker has acknowledged every message; raise otherwise."""


class Upstream(Protocol):
    """What the dispatcher needs from Claude (ClaudeClient in production)."""

    async def create(self, api_key: str, params: Mapping[str, Any]) -> UpstreamResult: ...


class FlowControl(Protocol):
    """Stop and restart fetching a partner's request topic (Kafka stays the buffer)."""

    def pause(self, partner_id: str) -> None: ...

    def resume(self, partner_id: str) -> None: ...


class NoFlowControl:
    def pause(self, partner_id: str) -> None:
        pass

    def resume(self, partner_id: str) -> None:
        pass


class FatalError(Exception):
    """The worker cannot go on (e.g. the broker refuses our outputs): stop loudly."""


@dataclass(frozen=True)
class DispatchConfig:
    max_in_flight: int = 256
    max_queued_per_partner: int = 256
    publish_attempts: int = 5
    max_record_bytes: int = 32 * 1024 * 1024


class ApiKeys:
    """A partner's Anthropic key: its own `api_key_ref`, else the default key."""

    def __init__(self, resolver: SecretResolver, default_key: str | None) -> None:
        self._resolver = resolver
        self._default = default_key

    def for_partner(self, partner: Partner) -> str:
        if partner.api_key_ref:
            return self._resolver.resolve(partner.api_key_ref).decode()
        if self._default:
            return self._default
        raise SecretError(
            "no Anthropic API key: set ANTHROPIC_API_KEY or the partner's api_key_ref"
        )


class Dispatcher:
    def __init__(
        self,
        *,
        registry: Registry,
        intake: Intake,
        claude: Upstream,
        keys: ApiKeys,
        codec: Codec,
        builder: OutcomeBuilder,
        publisher: Publisher,
        metrics: Metrics,
        policy: RetryPolicy,
        config: DispatchConfig,
        flow: FlowControl | None = None,
        limiter: Limiter | None = None,
        guard: ReplayGuard | None = None,
        ledger: BudgetLedger | None = None,
        prices: PriceTable | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        mono: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._registry = registry
        self._intake = intake
        self._claude = claude
        self._keys = keys
        self._codec = codec
        self._builder = builder
        self._publisher = publisher
        self._metrics = metrics
        self._policy = policy
        self._config = config
        self._flow = flow or NoFlowControl()
        self._on_fatal = on_fatal
        self._mono = mono
        self._wall = wall
        self._rng = rng
        self._limiter = limiter or Limiter(clock=mono)
        self._guard = guard
        self._ledger = ledger
        self._prices = prices or PriceTable()
        self._queue: KeyedFairQueue[str, str, Job] = KeyedFairQueue()
        # the last verdict per blocked partner or key, to know when to wake up
        self._verdicts: dict[str, Verdict] = {}
        self._throttled: dict[str, tuple[str | None, float]] = {}
        self._output_ratio: dict[str, float] = {}
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._wakeup = asyncio.Event()
        self._paused: set[str] = set()
        # position -> acks of every delivery of that record still being handled
        self._inflight: dict[tuple[str, int, int], list[AckFn]] = {}
        self._done: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._dispatch_loop(), name="dispatch-loop")
        self._loop_task.add_done_callback(self._task_done)
        self._sweep_task = asyncio.create_task(self._sweep_loop(), name="state-sweeper")
        self._sweep_task.add_done_callback(self._task_done)

    async def _sweep_loop(self, every_s: float = 30.0) -> None:
        """Forget request_ids past their signature window and budgets of past periods."""
        while True:
            await asyncio.sleep(every_s)
            if self._guard is not None:
                self._guard.sweep()
            if self._ledger is not None:
                self._ledger.prune()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop dispatching; give in-flight requests `grace_s` to finish, then cancel.

        Anything not finished is simply not acknowledged: Kafka redelivers it.
        """
        self._stopping = True
        for background in (self._loop_task, self._sweep_task):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        for job in self._queue.remove_where(lambda job: True):
            self._inflight.pop(job.record.position, None)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task failed", exc_info=exc, extra={"task": task.get_name()})
            if self._on_fatal is not None and not self._stopping:
                self._on_fatal(exc)

    def _spawn(self, coro: object, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    # -- introspection -----------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def depth(self, partner_id: str) -> int:
        return self._queue.depth(partner_id)

    # -- intake ------------------------------------------------------------------

    async def handle(self, record: SourceRecord, ack: AckFn) -> None:
        """Take one record from Kafka. Never raises; returns without waiting for Claude."""
        if self._stopping:
            return  # not acked: whoever consumes the partition next serves it
        position = record.position
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "record received",
                extra={**_record_fields(record), "request_id": key_request_id(record)},
            )
        waiting = self._inflight.get(position)
        if waiting is not None:
            waiting.append(ack)  # a redelivery of a record we are still handling
            return
        if position in self._done:
            await ack()  # redelivered after we finished, before the commit caught up
            return
        self._inflight[position] = [ack]
        if record.value is not None:
            await self._codec.prefetch(record.value)  # a new registry id: fetched off-loop
        try:
            job = self._intake.admit(record)
        except Rejected as rej:
            outcome = self._builder.failure(
                record,
                rej.error,
                partner_id=rej.partner_id,
                request_id=rej.request_id,
                request=rej.request,
            )
            self._spawn(self._finish(outcome), f"reject-{record.offset}")
            return
        except Exception as exc:  # a bug must cost one record, not the partition
            log.exception("intake failed", extra=_record_fields(record))
            partner = partner_of_requests_topic(record.topic)
            outcome = self._builder.failure(
                record,
                InvalidRequest(f"unexpected error at intake: {type(exc).__name__}"),
                partner_id=partner,
                request_id=key_request_id(record),
            )
            self._spawn(self._finish(outcome), f"reject-{record.offset}")
            return
        if self._guard is not None and not await self._guarded(job):
            return
        self._enqueue(job)
        if self._queue.depth(job.partner_id) >= self._config.max_queued_per_partner:
            self._pause(job.partner_id)

    async def _guarded(self, job: Job) -> bool:
        """Apply replay protection; False if the record needs no further work."""
        assert self._guard is not None  # noqa: S101 (checked by the caller)
        record = job.record
        verdict = self._guard.check(
            job.partner_id, job.request_id, record.position, job.replay_count
        )
        if verdict.seen is Seen.REDELIVERED_DONE:
            # Served before a crash or rebalance: no second call, no second outcome.
            acks = self._inflight.pop(record.position, [])
            self._remember_done(record.position)
            for ack in acks:
                await ack()
            log.info("redelivered record already served", extra=_job_fields(job))
            return False
        if verdict.seen is Seen.REPLAY:
            first = verdict.first
            where = f"{first[0]}[{first[1]}]@{first[2]}" if first else "earlier"
            err = AuthFailed(f"replayed request_id: already received at {where}")
            # no job: the guard's entry belongs to the first record, not this one
            self._spawn(self._finish(self._failure(job, err)), f"replay-{record.offset}")
            return False
        self._guard.begin(job.partner_id, job.request_id, record.position, job.replay_count)
        return True

    def _pause(self, partner: str) -> None:
        if partner not in self._paused:
            self._paused.add(partner)
            self._flow.pause(partner)
            log.info(
                "partner queue full: pausing its topic",
                extra={"partner": partner, "queued": self._queue.depth(partner)},
            )

    def _maybe_resume(self, partner: str) -> None:
        if partner in self._paused and self._queue.depth(partner) <= (
            self._config.max_queued_per_partner // 2
        ):
            self._paused.discard(partner)
            self._flow.resume(partner)
            log.info("partner queue drained: resuming its topic", extra={"partner": partner})

    def on_partitions_revoked(self, positions: Iterable[tuple[str, int]]) -> None:
        """Drop queued work of partitions we no longer own: their new owner re-reads it."""
        revoked = set(positions)
        dropped = self._queue.remove_where(
            lambda job: (job.record.topic, job.record.partition) in revoked
        )
        for job in dropped:
            self._inflight.pop(job.record.position, None)
        if dropped:
            log.info("dropped queued requests of revoked partitions", extra={"count": len(dropped)})

    def resume_all(self) -> None:
        """Re-apply pauses after a rebalance handed us fresh partitions."""
        for partner in list(self._paused):
            self._flow.pause(partner)

    # -- dispatch ------------------------------------------------------------------

    def _key_for(self, partner: Partner) -> tuple[str, str] | None:
        """(api key, its limiter id) for a partner, or None if it cannot be read."""
        try:
            api_key = self._keys.for_partner(partner)
        except SecretError:
            return None
        return api_key, key_id(api_key)

    def _partner_ok(self, partner_id: str, job: Job) -> bool:
        partner = self._registry.get(partner_id)
        if partner is None or not partner.enabled:
            return True  # let it through: it fails fast, without calling Claude
        if self._ledger is not None and (partner.daily_token_budget or partner.monthly_budget_usd):
            budget = self._ledger.check(partner, *self._worst_case(job))
            if budget.state == "exceeded":
                job.over_budget = budget.detail
                return True  # let it through: it ends as quota_exceeded
            if budget.state == "wait":
                self._blocked(f"partner:{partner_id}", partner_id, Verdict(0.05, "budget_pending"))
                return False
        verdict = self._limiter.partner_wait(partner, job.cost)
        self._blocked(f"partner:{partner_id}", partner_id, verdict)
        return verdict.go

    def _worst_case(self, job: Job) -> tuple[float, float]:
        """The most a request can spend: (tokens, dollars), for budget reservations.

        Computed once per request: bounding a PDF reads all of it.
        """
        if job.worst_case is None:
            upper = tokens.upper_bound_params(job.params)
            max_tokens = int(job.request["max_tokens"])
            usd = self._prices.worst_case(
                str(job.request["model"]),
                upper,
                max_tokens,
                cache_ttls=tokens.cache_write_ttls(job.params),
            )
            job.worst_case = (float(upper + max_tokens), usd)
        return job.worst_case

    def _key_ok(self, kid: str, job: Job, new: bool) -> bool:
        if kid.startswith(UNRESOLVED):
            return True  # no key to spend: fails fast at the attempt
        verdict = self._limiter.key_wait(kid, job.cost, headroom=not new)
        self._blocked(f"key:{kid}", job.partner_id, verdict)
        return verdict.go

    def _blocked(self, what: str, partner_id: str, verdict: Verdict) -> None:
        if verdict.go:
            self._verdicts.pop(what, None)
            return
        self._verdicts[what] = verdict
        self._note_throttle(partner_id, verdict)

    def _note_throttle(self, partner_id: str, verdict: Verdict) -> None:
        """One log line when a partner starts being held back, saying by what."""
        now = self._mono()
        last = self._throttled.get(partner_id)
        if last is not None and last[0] == verdict.reason and now - last[1] < 5.0:
            return
        self._throttled[partner_id] = (verdict.reason, now)
        reason = verdict.reason or ""
        scope = (
            "its own limit"
            if reason.startswith("partner_")
            else "a 429 pause"
            if reason == "paused"
            else "the upstream key's limit"
        )
        log.info(
            "partner throttled",
            extra={
                "partner": partner_id,
                "reason": reason,
                "by": scope,
                "wait_ms": int(verdict.wait_s * 1000),
                "queued": self._queue.depth(partner_id),
            },
        )

    def _next_wake(self) -> float | None:
        """Seconds until the soonest queued request may go (None: queue empty)."""
        if not len(self._queue):
            return None
        waits = [v.wait_s for v in self._verdicts.values()]
        return max(0.001, min(waits)) if waits else 0.05

    async def _dispatch_loop(self) -> None:
        while True:
            await self._slots.acquire()
            picked = self._queue.pop(self._partner_ok, self._key_ok)
            while picked is None:
                self._wakeup.clear()
                timeout = self._next_wake()
                self._verdicts.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
                picked = self._queue.pop(self._partner_ok, self._key_ok)
            partner_id, job = picked
            self._throttled.pop(partner_id, None)
            self._metrics.queue_depth.labels(partner_id).set(self._queue.depth(partner_id))
            self._maybe_resume(partner_id)
            self._cancel_deadline(job)
            partner = self._registry.get(partner_id)
            if (
                partner is not None
                and job.over_budget is None
                and job.key_id
                and not job.key_id.startswith(UNRESOLVED)
            ):
                job.dispatch_seq = self._limiter.consume(partner, job.key_id, job.cost)
                job.charged = True
                if self._ledger is not None and (
                    partner.daily_token_budget or partner.monthly_budget_usd
                ):
                    worst_tokens, worst_usd = self._worst_case(job)
                    job.reservation = self._ledger.reserve(
                        partner, job.record.partition, worst_tokens, worst_usd
                    )
            self._spawn(self._run(job), f"request-{job.request_id}")

    def _enqueue(self, job: Job, front: bool = False) -> None:
        partner = job.partner_id
        current = self._registry.get(partner) or job.partner
        keyed = self._key_for(current)
        job.key_id = keyed[1] if keyed is not None else UNRESOLVED + partner
        self._queue.push(
            job.key_id, partner, job, self._fair_cost(job), current.weight, front=front
        )
        self._metrics.queue_depth.labels(partner).set(self._queue.depth(partner))
        deadline = job.request.get("deadline_ms")
        if deadline is not None:
            delay = max(0.0, deadline / 1000 - self._wall())
            job.deadline_timer = asyncio.get_running_loop().call_later(delay, self._expire, job)
        self._wakeup.set()

    def _cancel_deadline(self, job: Job) -> None:
        if job.deadline_timer is not None:
            job.deadline_timer.cancel()
            job.deadline_timer = None

    def _expire(self, job: Job) -> None:
        """A queued request reached its deadline: it is not sent."""
        job.deadline_timer = None
        if not self._queue.remove_where(lambda queued: queued is job):
            return
        self._metrics.queue_depth.labels(job.partner_id).set(self._queue.depth(job.partner_id))
        err = DeadlineExpired("deadline passed while queued", attempts=job.attempts)
        self._spawn(self._finish(self._failure(job, err), job), f"expire-{job.request_id}")

    def _requeue(self, job: Job) -> None:
        """A retry's backoff is over: back to the head of its partner's lane."""
        if self._stopping:
            self._inflight.pop(job.record.position, None)
            return
        self._enqueue(job, front=True)

    async def _run(self, job: Job) -> None:
        """One attempt. Holds a concurrency slot only while Claude is being called."""
        outcome: Outcome | None = None
        try:
            if job.first_dispatch_mono is None:
                job.first_dispatch_mono = self._mono()
            try:
                result = await self._attempt(job)
                outcome = self._builder.success(job, result, job.queued_ms)
            except RequestError as err:
                self._release_budget(job)
                outcome = self._failure(job, err)
            except UpstreamError as err:
                delay = self._retry_delay(job, err)
                if isinstance(delay, RequestError):
                    outcome = self._failure(job, delay)
                else:
                    self._metrics.retries.labels(job.partner_id).inc()
                    log.info(
                        "retrying",
                        extra={
                            **_job_fields(job),
                            "delay_s": round(delay, 3),
                            "status": err.status,
                            "error_class": err.error_class,
                        },
                    )
                    # The sleeping retry holds no slot; it re-enters the scheduler.
                    asyncio.get_running_loop().call_later(delay, self._requeue, job)
        except Exception as exc:
            self._release_budget(job)
            log.exception("request failed unexpectedly", extra=_job_fields(job))
            outcome = self._failure(job, InvalidRequest(f"unexpected error: {type(exc).__name__}"))
        finally:
            self._slots.release()
        if outcome is not None:
            await self._finish(outcome, job)

    def _failure(self, job: Job, err: RequestError) -> Outcome:
        return self._builder.failure(
            job.record,
            err,
            partner_id=job.partner_id,
            request_id=job.request_id,
            request=job.request,
            job=job,
            queued_ms=job.queued_ms,
        )

    def _retry_delay(self, job: Job, err: UpstreamError) -> float | RequestError:
        if not err.is_retriable:
            return UpstreamRejected(err.message, attempts=job.attempts, error_type=err.error_type)
        if self._policy.exhausted(job.attempts):
            return UpstreamExhausted(
                f"gave up after {job.attempts} attempts; last: {err.message}",
                attempts=job.attempts,
                error_type=err.error_type,
            )
        delay = self._policy.delay(job.attempts, err.retry_after, self._rng)
        deadline = job.request.get("deadline_ms")
        if deadline is not None and (self._wall() + delay) * 1000 >= deadline:
            return DeadlineExpired(
                f"the next attempt (in {delay:.1f} s) would start after the deadline",
                attempts=job.attempts,
            )
        return delay

    async def _attempt(self, job: Job) -> UpstreamResult:
        partner = self._registry.get(job.partner_id)
        if partner is None:
            raise UnknownPartner(f"partner {job.partner_id!r} was removed")
        if not partner.enabled:
            raise PartnerDisabled(f"partner {job.partner_id!r} is disabled")
        deadline = job.request.get("deadline_ms")
        if deadline is not None and self._wall() * 1000 >= deadline:
            raise DeadlineExpired("deadline passed while queued", attempts=job.attempts)
        if job.over_budget is not None:
            raise QuotaExceeded(job.over_budget, attempts=job.attempts)
        try:
            api_key = self._keys.for_partner(partner)
        except SecretError as exc:
            raise UpstreamRejected(str(exc), attempts=job.attempts) from None
        kid = key_id(api_key)
        refused = self._limiter.key_refused(kid)
        if refused is not None:
            raise UpstreamRejected(refused, attempts=job.attempts)
        job.attempts += 1
        started = self._mono()
        try:
            result = await self._claude.create(api_key, job.params)
        except UpstreamError as err:
            self._account_attempt(job, started, err.status)
            self._metrics.errors.labels(job.partner_id, err.error_class).inc()
            job.last_error_type = err.error_type
            self._observe(kid, err.headers, job)
            # A 429 was never charged; other failures probably were, minus the output.
            used = None if err.status == 429 else Cost(job.cost.input_tokens, 0)
            self._settle(job, partner, kid, used)
            self._release_budget(job)
            if err.status in (401, 403):
                # This key is revoked or lacks permission: its partners' requests
                # fail fast for a while; other keys (other partners) carry on.
                self._metrics.key_rejected.labels(job.partner_id).inc()
                self._limiter.refuse_key(kid, f"Claude refused the API key ({err.status})", 30.0)
                log.warning(
                    "Claude refused an API key",
                    extra={**_job_fields(job), "key": kid, "status": err.status},
                )
            if err.status == 429:
                self._limiter.pause(kid, err.retry_after if err.retry_after is not None else 1.0)
                log.warning(
                    "429 from Claude: pausing the key",
                    extra={
                        **_job_fields(job),
                        "key": kid,
                        "retry_after": err.retry_after,
                        "detail": err.message,
                    },
                )
            raise
        self._account_attempt(job, started, result.status)
        self._observe(kid, result.headers, job)
        actual = Cost(
            result.input_tokens + result.cache_creation_input_tokens, result.output_tokens
        )
        self._settle(job, partner, kid, actual)
        self._learn_output(job, result.output_tokens)
        if job.reservation is not None and self._ledger is not None:
            usd = self._prices.cost(
                result.model,
                result.input_tokens,
                result.output_tokens,
                result.cache_read_input_tokens,
                result.cache_creation_input_tokens,
                cache_creation_1h_input_tokens=result.cache_creation_1h_input_tokens,
                web_search_requests=result.web_search_requests,
            )
            spent_tokens = (
                result.input_tokens
                + result.output_tokens
                + result.cache_read_input_tokens
                + result.cache_creation_input_tokens
            )
            job.durable.extend(self._ledger.settle(job.reservation, spent_tokens, usd))
            job.reservation = None
        return result

    def _release_budget(self, job: Job) -> None:
        if job.reservation is not None and self._ledger is not None:
            self._ledger.release(job.reservation)
            job.reservation = None

    def _fair_cost(self, job: Job) -> int:
        """A request's cost for fair sharing: its input, plus the output this
        partner's requests really produce (learned), not the worst case."""
        ratio = self._output_ratio.get(job.partner_id, 1.0)
        return job.est_input_tokens + max(1, math.ceil(int(job.request["max_tokens"]) * ratio))

    def _learn_output(self, job: Job, output_tokens: int) -> None:
        """Correct the partner's estimate with what a response really used."""
        max_tokens = max(1, int(job.request["max_tokens"]))
        observed = min(1.0, output_tokens / max_tokens)
        previous = self._output_ratio.get(job.partner_id, 1.0)
        self._output_ratio[job.partner_id] = 0.8 * previous + 0.2 * observed

    def _settle(self, job: Job, partner: Partner, kid: str, used: Cost | None) -> None:
        if job.charged:
            job.charged = False
            self._limiter.settle(partner, kid, job.dispatch_seq, job.cost, used)

    def _account_attempt(self, job: Job, started: float, status: int | None) -> None:
        elapsed = self._mono() - started
        job.upstream_s += elapsed
        job.last_status = status
        self._metrics.upstream_duration.labels(job.partner_id).observe(elapsed)

    def _observe(self, kid: str, headers: Mapping[str, str], job: Job) -> None:
        seq = job.dispatch_seq if job.charged else -1
        for resource, remaining in self._limiter.observe(kid, headers, job.cost, seq).items():
            self._metrics.ratelimit_remaining.labels(resource).set(remaining)

    # -- outcomes ------------------------------------------------------------------

    async def _finish(self, outcome: Outcome, job: Job | None = None) -> None:
        record = outcome.record
        outcome, messages = fit(
            self._builder, outcome, job, self._codec, self._config.max_record_bytes
        )
        if job is not None and self._guard is not None:
            # The done marker travels with the outcome (not after it): a crash
            # between the two is the only way a redelivery repeats the work.
            job.durable.append(
                self._guard.end(job.partner_id, job.request_id, record.position, job.replay_count)
            )
        for attempt in range(1, self._config.publish_attempts + 1):
            try:
                await self._publisher.publish(messages)
                break
            except Exception as exc:
                if attempt == self._config.publish_attempts:
                    raise FatalError(
                        f"cannot publish outcomes after {attempt} attempts: {exc}"
                    ) from exc
                log.warning(
                    "publish failed, retrying",
                    extra={**_record_fields(record), "attempt": attempt, "error": str(exc)},
                )
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
        if job is not None:
            # Durable before the offset may be committed: the request is done
            # (a redelivery must not call Claude again) and what it spent.
            await wait_all(job.durable)
            job.durable.clear()
        self._account(outcome, job)
        acks = self._inflight.pop(record.position, [])
        self._remember_done(record.position)
        for ack in acks:
            await ack()

    def _remember_done(self, position: tuple[str, int, int]) -> None:
        self._done[position] = None
        if len(self._done) > DONE_MEMORY:
            self._done.popitem(last=False)

    def _account(self, outcome: Outcome, job: Job | None) -> None:
        partner = outcome.partner_id or "unknown"
        m = self._metrics
        if outcome.response is not None:
            m.requests.labels(partner, outcome.status).inc()
            created = outcome.response.get("latency_ms")
            if isinstance(created, int):
                m.request_duration.labels(partner).observe(created / 1000)
        if outcome.usage is not None:
            u = outcome.usage
            for kind, field_name in (
                ("input", "input_tokens"),
                ("output", "output_tokens"),
                ("cache_read", "cache_read_input_tokens"),
                ("cache_write", "cache_creation_input_tokens"),
            ):
                if u[field_name]:
                    m.tokens.labels(partner, kind).inc(u[field_name])
            if u["cost_usd"]:
                m.cost.labels(partner).inc(u["cost_usd"])
        fields = {
            **_record_fields(outcome.record),
            "partner": outcome.partner_id,
            "request_id": outcome.request_id,
            "status": outcome.status,
        }
        if outcome.response is not None:
            fields["latency_ms"] = outcome.response["latency_ms"]
            fields["attempt"] = outcome.response["attempts"]
        if job is not None:
            # Where the time went: record timestamp to intake (produce, broker,
            # fetch), intake to first dispatch, and calls to Claude.
            received_ms = (self._wall() - (self._mono() - job.received_mono)) * 1000
            if job.record.timestamp_ms:
                fields["intake_lag_ms"] = int(received_ms - job.record.timestamp_ms)
            fields["queued_ms"] = job.queued_ms
            fields["upstream_ms"] = int(job.upstream_s * 1000)
        if outcome.dead_letter is not None:
            reason = outcome.reason or "unknown"
            m.dlq.labels(partner, reason).inc()
            fields["reason"] = reason
            fields["detail"] = outcome.dead_letter["detail"]
            log.warning("dead-lettered", extra=fields)
        else:
            log.info("served", extra=fields)


def _record_fields(record: SourceRecord) -> dict[str, object]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def _job_fields(job: Job) -> dict[str, object]:
    return {
        **_record_fields(job.record),
        "partner": job.partner_id,
        "request_id": job.request_id,
        "attempt": job.attempts,
    }
