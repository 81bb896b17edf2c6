"""The worker's engine: a short loop over the request lifecycle's parts.

Kafka-agnostic: records come in through `handle(record, ack)`, outcomes leave
through a `Publisher`, and `ack` is called only after every output record of an
outcome is acknowledged by the broker (at least once: a crash can repeat work,
never lose it).

    handle ── deliveries (one piece of work per record) ── intake ── replay guard
           └─ queue (weighted deficit round robin per upstream key)
    loop   ── admission (budget, partner, key: a verdict) ── charge and reserve
           └─ attempt (the Claude call, settled) ── retry later, or
    end    ── completion (publish, make durable, ack)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from pipeline.errors import DeadlineExpired, RequestError
from pipeline.failpoints import Failpoints
from pipeline.lifecycle.admission import Admission, AdmissionVerdict, Decision, ThrottleLog
from pipeline.lifecycle.attempt import Attempts, Failed, Retry, Served, Upstream, job_fields
from pipeline.lifecycle.backlog import Backlog
from pipeline.lifecycle.batchlane import BatchLane
from pipeline.lifecycle.completion import (
    Atomic,
    Completion,
    CompletionConfig,
    Deliveries,
    Publisher,
    Reporter,
)
from pipeline.lifecycle.examiner import Examiner
from pipeline.lifecycle.intake import Intake
from pipeline.lifecycle.outcomes import Outcome, OutcomeBuilder
from pipeline.lifecycle.pausing import FlowControl, NoFlowControl, Pausing
from pipeline.lifecycle.picker import Picker
from pipeline.lifecycle.reception import Homes, Reception
from pipeline.lifecycle.responsecache import ResponseCache
from pipeline.lifecycle.tasks import Running, Supervisor
from pipeline.limits.pricing import PriceTable
from pipeline.limits.ratelimit import Limiter
from pipeline.limits.retry import RetryPolicy
from pipeline.ops.metrics import Metrics
from pipeline.partners import Registry
from pipeline.records import AckFn, Job, SourceRecord
from pipeline.schemas import Codec
from pipeline.state import BudgetLedger, ReplayGuard
from pipeline.upstream.keys import ApiKeys

log = logging.getLogger("pipeline.lifecycle.dispatch")

#: How often request_ids past their signature window and old budgets are forgotten.
SWEEP_EVERY_S = 30.0


@dataclass(frozen=True)
class DispatchConfig:
    max_in_flight: int = 256
    max_queued_per_partner: int = 256
    publish_attempts: int = 5
    max_record_bytes: int = 32 * 1024 * 1024
    #: Test-only crash points (see pipeline/failpoints.py).
    failpoints: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Stages:
    """The parts a dispatcher loops over (see `pipeline.worker.build_stages`)."""

    registry: Registry
    codec: Codec
    intake: Intake
    keys: ApiKeys
    limiter: Limiter
    admission: Admission
    attempts: Attempts
    builder: OutcomeBuilder
    deliveries: Deliveries
    completion: Completion
    pausing: Pausing
    metrics: Metrics
    guard: ReplayGuard | None = None
    ledger: BudgetLedger | None = None
    #: Waits until the durable state is read up to now (after a rebalance).
    state_synced: Callable[[], Awaitable[None]] | None = None
    #: Decodes heavy records in a helper process (None: on the event loop, as any).
    examiner: Examiner | None = None
    #: Tells a misplaced record's producer mistake from a replay (None: never answered).
    homes: Homes | None = None
    #: Answers `priority: batch` requests through Message Batches (None: interactively).
    lane: BatchLane | None = None
    #: Answers exact repeats of deterministic requests (None: every request is called).
    responses: ResponseCache | None = None


class Dispatcher:
    def __init__(
        self,
        stages: Stages,
        config: DispatchConfig,
        *,
        on_fatal: Callable[[BaseException], None] | None = None,
        mono: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._s = stages
        self._config = config
        self._mono = mono
        self._wall = wall
        self._backlog = Backlog(
            registry=stages.registry,
            keys=stages.keys,
            metrics=stages.metrics,
            pausing=stages.pausing,
            on_expired=self._expired,
            wall=wall,
        )
        self._picker = Picker(
            self._backlog,
            stages.admission,
            ThrottleLog(mono),
            stages.registry,
            stages.limiter,
            stages.ledger,
        )
        #: Requests being attempted (called, then their outcome written), by partition.
        self._running = Running()
        self._reception = Reception(
            deliveries=stages.deliveries,
            codec=stages.codec,
            intake=stages.intake,
            guard=stages.guard,
            state_synced=stages.state_synced,
            builder=stages.builder,
            completion=stages.completion,
            metrics=stages.metrics,
            spawn=lambda coro, name: self._tasks.spawn(coro, name),
            pausing=stages.pausing,
            examiner=stages.examiner,
            homes=stages.homes,
            responses=stages.responses,
            running=self._running,
            deliver=self._enqueue,
            owned=self._owns,
        )
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._wakeup = asyncio.Event()
        #: The requests being worked on (what a drain waits for) ...
        self._tasks = Supervisor("dispatcher", on_fatal)
        #: ... and the loops that run for as long as the dispatcher does.
        self._loops = Supervisor("dispatcher loops", on_fatal)
        self._stopping = False
        #: Partitions taken away from this worker and not given back.
        self._revoked: set[tuple[str, int]] = set()
        if stages.lane is not None:
            stages.lane.bind(stages.completion, self._enqueue, self._running, self._owns, on_fatal)

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._loops.spawn(self._dispatch_loop(), "dispatch-loop")
        self._loops.spawn(self._sweep_loop(), "state-sweeper")
        if self._s.lane is not None:
            await self._s.lane.start()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop dispatching; give in-flight requests `grace_s` to finish, then cancel.

        Anything not finished is not acknowledged: Kafka redelivers it.
        """
        self._stopping = True
        await self._loops.stop()  # nothing new is dispatched
        if self._s.lane is not None:
            await self._s.lane.stop(grace_s)  # its batches are in the state log: found again
        for job in self._backlog.remove(lambda job: True):
            self._s.deliveries.forget(job.record.position)
        await self._tasks.stop(grace_s)  # returns as soon as the requests in flight are done

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            if self._s.guard is not None:
                self._s.guard.sweep()
            if self._s.ledger is not None:
                self._s.ledger.prune()
            if self._s.responses is not None:
                self._s.responses.sweep()

    # -- introspection -----------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._backlog)

    @property
    def in_flight(self) -> int:
        return len(self._s.deliveries)

    def depth(self, partner_id: str) -> int:
        return self._backlog.depth(partner_id)

    # -- intake ------------------------------------------------------------------

    async def handle(self, record: SourceRecord, ack: AckFn) -> None:
        """Take one record from Kafka. Never raises; returns without waiting for Claude."""
        if self._stopping:
            return  # not acked: whoever consumes the partition next serves it
        job = await self._reception.receive(record, ack)
        if job is not None:
            self._enqueue(job)

    def _enqueue(self, job: Job, front: bool = False) -> None:
        """Into its partner's lane (a retry whose backoff is over: at its head),
        unless its partition went to another worker meanwhile (which re-reads the
        record: calling Claude here too would be a second call)."""
        if not self._owns(job.record):
            self._s.deliveries.forget(job.record.position)
            return
        job.progress.batch = self._s.lane is not None and self._s.lane.accepts(job)
        self._backlog.push(job, front=front)
        self._wakeup.set()

    def _owns(self, record: SourceRecord) -> bool:
        return not self._stopping and (record.topic, record.partition) not in self._revoked

    def on_partitions_revoked(self, positions: Iterable[tuple[str, int]]) -> None:
        """Drop queued work of partitions we no longer own: their new owner re-reads it.
        (Retries waiting out their backoff are dropped when it ends: see `_enqueue`.)"""
        revoked = set(positions)
        self._revoked |= revoked
        if self._s.lane is not None:
            self._s.lane.revoke(revoked)
        dropped = self._backlog.remove(
            lambda job: (job.record.topic, job.record.partition) in revoked
        )
        for job in dropped:
            self._s.deliveries.forget(job.record.position)
        if dropped:
            log.info("dropped queued requests of revoked partitions", extra={"count": len(dropped)})

    async def finish_revoked(self, positions: Iterable[tuple[str, int]], timeout_s: float) -> int:
        """Wait (at most `timeout_s`) for the attempts under way on these partitions
        to finish; returns how many are still running."""
        return await self._running.finish(positions, timeout_s)

    def on_partitions_assigned(self, assigned: Iterable[tuple[str, int]] = ()) -> None:
        self._revoked -= set(assigned)
        self._s.pausing.reapply()

    def on_partner_changed(self, partner_id: str) -> None:
        """A partner's registration changed: requests waiting for it follow its key."""
        self._backlog.rekey(partner_id)
        self._wakeup.set()

    def _expired(self, job: Job) -> None:
        """A queued request reached its deadline: it is not sent."""
        err = DeadlineExpired("deadline passed while queued", attempts=job.attempts)
        self._end(self._failure(job, err), job)

    # -- dispatch ------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            await self._slots.acquire()
            job, verdict = await self._next()
            if verdict.decision is Decision.REFUSE and verdict.error is not None:
                self._slots.release()
                self._end(self._failure(job, verdict.error), job)
                continue
            self._picker.charge(job)
            if job.progress.batch and self._s.lane is not None:
                self._slots.release()  # it waits for its batch holding no slot
                self._tasks.spawn(self._s.lane.take(job), f"batch-{job.request_id}")
                continue
            self._running.add((job.record.topic, job.record.partition))
            self._tasks.spawn(self._run(job), f"request-{job.request_id}")

    async def _next(self) -> tuple[Job, AdmissionVerdict]:
        """The next request the scheduler and every gate let go (or refuse for good)."""
        while True:
            picked, waits = self._picker.pick()
            if picked is not None:
                return picked
            self._wakeup.clear()
            timeout = max(0.001, min(waits)) if waits else 0.05
            # Not `asyncio.wait_for`: on Python 3.11 it swallows a cancellation that
            # arrives as the event is set, and this loop would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()

    async def _run(self, job: Job) -> None:
        try:
            await self._attempt(job)
        finally:
            self._running.done((job.record.topic, job.record.partition))

    async def _attempt(self, job: Job) -> None:
        """One attempt. Holds a concurrency slot only while Claude is being called."""
        if job.progress.first_dispatch_mono is None:
            job.progress.first_dispatch_mono = self._mono()
        try:
            result = await self._s.attempts.run(job)
        finally:
            self._slots.release()
        if isinstance(result, Retry):
            self._s.metrics.retries.labels(job.partner_id).inc()
            log.info(
                "retrying",
                extra={
                    **job_fields(job),
                    "delay_s": round(result.delay_s, 3),
                    "status": result.error.status,
                    "error_class": result.error.error_class,
                },
            )
            # The sleeping retry holds no slot; it re-enters the scheduler.
            asyncio.get_running_loop().call_later(result.delay_s, self._enqueue, job, True)
            return
        if isinstance(result, Served):
            self._backlog.fairness.learn(job.partner_id, job.admitted.max_tokens, result.result)
            if self._s.responses is not None:
                self._s.responses.remember(job, result.result)
            outcome = self._s.builder.success(job, result.result, job.queued_ms)
        else:
            assert isinstance(result, Failed)  # noqa: S101 (the three kinds of result)
            outcome = self._failure(job, result.error)
        await self._s.completion.finish(outcome, job)

    # -- outcomes ------------------------------------------------------------------

    def _failure(self, job: Job, err: RequestError) -> Outcome:
        return self._s.builder.failure(
            job.record,
            err,
            partner_id=job.partner_id,
            request_id=job.request_id,
            request=job.request,
            job=job,
            queued_ms=job.queued_ms,
        )

    def _end(self, outcome: Outcome, job: Job) -> None:
        self._tasks.spawn(self._s.completion.finish(outcome, job), f"end-{job.request_id}")


def assemble(
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
    state_synced: Callable[[], Awaitable[None]] | None = None,
    prices: PriceTable | None = None,
    examiner: Examiner | None = None,
    homes: Homes | None = None,
    atomic: Atomic | None = None,
    lane: BatchLane | None = None,
    responses: ResponseCache | None = None,
    mono: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
    rng: Callable[[], float] = random.random,
) -> Stages:
    """The stages of a dispatcher, from their collaborators (the worker's wiring)."""
    limiter = limiter or Limiter(clock=mono)
    deliveries = Deliveries()
    return Stages(
        registry=registry,
        codec=codec,
        intake=intake,
        keys=keys,
        limiter=limiter,
        admission=Admission(registry, limiter, ledger),
        attempts=Attempts(
            registry=registry,
            claude=claude,
            keys=keys,
            limiter=limiter,
            ledger=ledger,
            prices=prices or PriceTable(),
            metrics=metrics,
            policy=policy,
            mono=mono,
            wall=wall,
            rng=rng,
        ),
        builder=builder,
        deliveries=deliveries,
        completion=Completion(
            publisher=publisher,
            codec=codec,
            builder=builder,
            deliveries=deliveries,
            reporter=Reporter(metrics, mono, wall),
            guard=guard,
            config=CompletionConfig(config.publish_attempts, config.max_record_bytes),
            failpoints=Failpoints(config.failpoints),
            atomic=atomic,
        ),
        pausing=Pausing(flow or NoFlowControl(), config.max_queued_per_partner),
        metrics=metrics,
        guard=guard,
        ledger=ledger,
        state_synced=state_synced,
        examiner=examiner,
        homes=homes,
        lane=lane,
        responses=responses,
    )
