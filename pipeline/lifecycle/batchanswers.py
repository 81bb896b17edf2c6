"""One batch result made an outcome: published at the batch price, served again
interactively, or dead-lettered; and the budget each request holds meanwhile.

The request's state entry is removed with its outcome (in its transaction, on
Kafka), so a crash either leaves both or neither: never a request answered twice
or forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from pipeline.errors import DeadlineExpired, RequestError, UpstreamRejected
from pipeline.lifecycle import batching as b
from pipeline.lifecycle.attempt import spend
from pipeline.lifecycle.batching import REQUEST
from pipeline.lifecycle.outcomes import Outcome, OutcomeBuilder
from pipeline.lifecycle.responsecache import ResponseCache
from pipeline.limits.pricing import BATCH_MULTIPLIER, PriceTable
from pipeline.ops.metrics import Metrics
from pipeline.partners import Registry
from pipeline.records import Job
from pipeline.state import BudgetLedger, ReplayGuard
from pipeline.upstream.claude import to_result

log = logging.getLogger("pipeline.lifecycle.batchanswers")

#: How many of a batch's requests are answered at once.
ANSWERING = 32


class Table(Protocol):
    """The state log's `batches` table (a `LogTable`; a `MemoryStore` in tests)."""

    def get(self, key: str) -> Any: ...
    def put(self, key: str, value: Any) -> Awaitable[Any] | None: ...
    def remove(self, key: str) -> Awaitable[Any] | None: ...
    def items(self) -> Any: ...


async def settled(write: Awaitable[Any] | None) -> None:
    if write is not None:
        await write


class Answers:
    def __init__(
        self,
        *,
        table: Table,
        registry: Registry,
        ledger: BudgetLedger | None,
        guard: ReplayGuard | None,
        builder: OutcomeBuilder,
        prices: PriceTable,
        metrics: Metrics,
        responses: ResponseCache | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._responses = responses
        self._table = table
        self._registry = registry
        self._ledger = ledger
        self._guard = guard
        self._builder = builder
        self._prices = prices
        self._metrics = metrics
        self._wall = wall
        # set by the dispatcher (`BatchLane.bind`)
        self.finish: Callable[[Outcome, Job | None], Awaitable[None]] | None = None
        self.requeue: Callable[[Job], None] | None = None

    async def answer_all(self, jobs: Mapping[str, Job], results: list[dict[str, Any]]) -> None:
        """Each job's outcome from its result (a request the results omit: `expired`),
        `ANSWERING` at a time. A failure to publish stops the worker (its caller's
        supervisor), as it does for interactive requests."""
        by_cid = {r["custom_id"]: r.get("result") or {} for r in results}
        slots = asyncio.Semaphore(ANSWERING)

        async def one(cid: str, job: Job) -> None:
            async with slots:
                await self.answer(cid, job, by_cid.get(cid, {"type": "expired"}))

        await asyncio.gather(*(one(cid, job) for cid, job in jobs.items()))

    async def refuse(self, cid: str, value: Mapping[str, Any], error: RequestError) -> None:
        """A handed-over request its partner's registration now refuses (removed,
        disabled, its rules changed): dead-lettered, its entry removed."""
        outcome = self._builder.failure(
            b.entry_record(value),
            error,
            partner_id=str(value.get("pid") or "") or None,
            request_id=str(value.get("rid") or "") or None,
            replay_count=int(value.get("rc") or 0),
            verified=True,  # at intake, before it was handed over
        )
        if self.finish is not None:
            await self.finish(outcome, None)
        await settled(self._table.remove(REQUEST + cid))

    async def answer(self, cid: str, job: Job, result: Mapping[str, Any]) -> None:
        if self._guard is not None and self._guard.done(job.partner_id, job.request_id):
            self.release(job)  # answered before a crash; its entry outlived it
            await settled(self._table.remove(REQUEST + cid))
            return
        decision = b.decide(result, job.admitted.deadline_ms, int(self._wall() * 1000))
        self._metrics.batch_requests.labels(job.partner_id, decision.action.value).inc()
        job.progress.attempts = max(job.progress.attempts, 1)
        job.progress.with_outcome.append(lambda: self._table.remove(REQUEST + cid))
        if decision.action is b.Action.INTERACTIVE:
            self.release(job)
            job.progress.batch, job.progress.interactive = False, True
            log.info(
                "batch request served interactively",
                extra={
                    "partner": job.partner_id,
                    "request_id": job.request_id,
                    "detail": decision.detail,
                },
            )
            if self.requeue is not None:
                self.requeue(job)
            return
        if decision.action is b.Action.PUBLISH:
            outcome = self._success(job, result["message"])
        else:
            error: RequestError = (
                DeadlineExpired(decision.detail, attempts=job.attempts)
                if decision.action is b.Action.EXPIRE
                else UpstreamRejected(
                    decision.detail, attempts=job.attempts, error_type=decision.error_type
                )
            )
            self.release(job)
            outcome = self._builder.failure(
                job.record,
                error,
                partner_id=job.partner_id,
                request_id=job.request_id,
                request=job.request,
                job=job,
                queued_ms=job.queued_ms,
            )
        if self.finish is not None:
            await self.finish(outcome, job)

    def _success(self, job: Job, message: Mapping[str, Any]) -> Outcome:
        result = replace(to_result(message, {}), batch=True)
        spend(job, result, self._ledger, self._prices)
        if self._responses is not None:
            self._responses.remember(job, result)
        return self._builder.success(job, result, job.queued_ms)

    # -- budgets ---------------------------------------------------------------------------

    def reserve(self, job: Job) -> None:
        """A request adopted from the state log holds its worst case at the batch price."""
        partner = self._registry.get(job.partner_id)
        if self._ledger is None or partner is None or not partner.has_budget:
            return
        job.progress.reservation = self._ledger.reserve(
            partner,
            job.record.partition,
            job.admitted.worst_tokens,
            job.admitted.worst_usd * BATCH_MULTIPLIER,
        )

    def release(self, job: Job) -> None:
        reservation, job.progress.reservation = job.progress.reservation, None
        if reservation is not None and self._ledger is not None:
            self._ledger.release(reservation)
