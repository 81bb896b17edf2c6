"""The end of a request, owned by one object: publish its outcome, make what it
changed durable, then acknowledge every delivery of its record.

In this order, because each step makes the next one safe. Kafka commits an
offset once its record is acked, so a crash before the ack repeats the work (at
least once), never loses it. The request's "done" marker is written only once
every record of its outcome is on the broker: a marker that is durable while an
outcome record is not would make the redelivery after a crash skip the request,
and lose that record. (A crash between the outcome and the marker repeats the
outcome instead: a second response, the at-least-once duplicate partners dedupe
by request_id.) With `atomic` (transactions, on Kafka) the outcome and the
marker are one transaction instead: a crash leaves both or neither, so a
read_committed partner never sees a second response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from pipeline.errors import Stage, internal
from pipeline.failpoints import Failpoints
from pipeline.lifecycle.outcomes import Outcome, OutcomeBuilder, fit, last_resort
from pipeline.ops.metrics import Metrics
from pipeline.records import AckFn, Job, OutMessage, SourceRecord
from pipeline.schemas import Codec
from pipeline.state import ReplayGuard, wait_all

log = logging.getLogger("pipeline.lifecycle.completion")

#: How many finished record positions to remember for redelivery detection.
DONE_MEMORY = 100_000

Position = tuple[str, int, int]


class FatalError(Exception):
    """The worker cannot go on (e.g. the broker refuses our outputs): stop loudly."""


class Publisher(Protocol):
    async def publish(self, messages: list[OutMessage]) -> None:
        """Return once the broker has acknowledged every message; raise otherwise."""


class Atomic(Protocol):
    """Sends outcome records in the same transactions as state writes (StateLog)."""

    def together(self) -> AbstractContextManager[None]:
        """Writes and sends made inside, with no await between, commit as one."""

    def send(self, messages: Iterable[OutMessage]) -> list[asyncio.Future[None]]: ...


class Arrival(Enum):
    NEW = "new"
    IN_FLIGHT = "in_flight"  # a redelivery of a record still being handled
    DONE = "done"  # redelivered after it finished, before the commit caught up


class Deliveries:
    """Every delivery of each record still being handled, and positions just finished.

    Kafka may deliver a record again (a rebalance, a seek): every delivery must be
    acked, but only one may be worked on.
    """

    def __init__(self, memory: int = DONE_MEMORY) -> None:
        self._inflight: dict[Position, list[AckFn]] = {}
        self._done: OrderedDict[Position, None] = OrderedDict()
        self._memory = memory

    def __len__(self) -> int:
        return len(self._inflight)

    def arrive(self, position: Position, ack: AckFn) -> Arrival:
        waiting = self._inflight.get(position)
        if waiting is not None:
            waiting.append(ack)
            return Arrival.IN_FLIGHT
        if position in self._done:
            return Arrival.DONE
        self._inflight[position] = [ack]
        return Arrival.NEW

    def forget(self, position: Position) -> None:
        """Give up a record without acking it: whoever consumes it next serves it."""
        self._inflight.pop(position, None)

    def finish(self, position: Position) -> list[AckFn]:
        """The record is done: every delivery's ack, to call now."""
        self._done[position] = None
        if len(self._done) > self._memory:
            self._done.popitem(last=False)
        return self._inflight.pop(position, [])


def record_fields(record: SourceRecord) -> dict[str, object]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


class Reporter:
    """Metrics and one log line per outcome: `served`, or `dead-lettered` with its reason."""

    def __init__(
        self,
        metrics: Metrics,
        mono: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = metrics
        self._mono = mono
        self._wall = wall

    def _intake_split(self, job: Job) -> dict[str, float]:
        """Record timestamp to intake (`intake_lag_ms`), split where the record says
        when it got there: to Faust's stream taking it from the agent's buffer
        (`kafka_ms`: the producer's linger, the broker, the consumer's thread, the
        buffer), to our handler (`stream_ms`: the rest of Faust's stream), to
        admitted (`admit_ms`: ours)."""
        record = job.record
        wall_ms = (self._wall() - self._mono()) * 1000  # a monotonic instant, as wall time
        admitted_ms = wall_ms + job.admitted.received_mono * 1000
        split: dict[str, float] = {}
        if record.timestamp_ms:
            split["intake_lag_ms"] = int(admitted_ms - record.timestamp_ms)
        fetched, arrived = record.fetched_mono, record.arrived_mono
        if record.timestamp_ms and fetched is not None and arrived is not None:
            fetched_ms = wall_ms + fetched * 1000
            arrived_ms = wall_ms + arrived * 1000
            # to a tenth of a millisecond: the last two are usually under one
            split["kafka_ms"] = round(fetched_ms - record.timestamp_ms, 1)
            split["stream_ms"] = round(arrived_ms - fetched_ms, 1)
            split["admit_ms"] = round(admitted_ms - arrived_ms, 1)
        return split

    def report(self, outcome: Outcome, job: Job | None) -> None:
        partner = outcome.partner_id or "unknown"
        m = self._metrics
        fields: dict[str, object] = {
            **record_fields(outcome.record),
            "partner": outcome.partner_id,
            "request_id": outcome.request_id,
            "status": outcome.status.value,
        }
        if outcome.response is not None:
            m.requests.labels(partner, outcome.status.value).inc()
            latency = outcome.response["latency_ms"]
            m.request_duration.labels(partner).observe(latency / 1000)
            fields["latency_ms"] = latency
            fields["attempt"] = outcome.response["attempts"]
        if outcome.usage is not None:
            u = outcome.usage
            for kind, count in (
                ("input", u["input_tokens"]),
                ("output", u["output_tokens"]),
                ("cache_read", u["cache_read_input_tokens"]),
                ("cache_write", u["cache_creation_input_tokens"]),
            ):
                if count:
                    m.tokens.labels(partner, kind).inc(count)
            if u["cost_usd"]:
                m.cost.labels(partner).inc(u["cost_usd"])
        if job is not None:
            # Where the time went: record timestamp to intake (produce, broker,
            # fetch), intake to first dispatch, and calls to Claude.
            fields.update(self._intake_split(job))
            fields["queued_ms"] = job.queued_ms
            fields["upstream_ms"] = int(job.upstream_s * 1000)
        if outcome.dead_letter is not None:
            reason = outcome.dead_letter["reason"]
            m.dlq.labels(partner, reason).inc()
            fields["reason"] = reason
            fields["detail"] = outcome.dead_letter["detail"]
            log.warning("dead-lettered", extra=fields)
        else:
            log.info("served", extra=fields)


@dataclass(frozen=True)
class CompletionConfig:
    publish_attempts: int = 5
    max_record_bytes: int = 32 * 1024 * 1024


class Completion:
    def __init__(
        self,
        *,
        publisher: Publisher,
        codec: Codec,
        builder: OutcomeBuilder,
        deliveries: Deliveries,
        reporter: Reporter,
        guard: ReplayGuard | None,
        config: CompletionConfig,
        failpoints: Failpoints | None = None,
        atomic: Atomic | None = None,
    ) -> None:
        self._atomic = atomic
        self._failpoints = failpoints or Failpoints()
        self._publisher = publisher
        self._codec = codec
        self._builder = builder
        self._deliveries = deliveries
        self._reporter = reporter
        self._guard = guard
        self._config = config

    async def finish(self, outcome: Outcome, job: Job | None = None) -> None:
        """1. the outcome's records, each within the record limit; 2. publish them
        (acknowledged by the broker); 3. the done marker; 4. wait until what the
        request changed is durable; 5. report; 6. ack every delivery."""
        record = outcome.record
        try:
            outcome, messages = fit(
                self._builder, outcome, job, self._codec, self._config.max_record_bytes
            )
        except Exception as exc:
            fields = {
                **record_fields(record),
                "partner": outcome.partner_id,
                "request_id": outcome.request_id,
            }
            error = internal(Stage.COMPLETION, exc, log, fields)
            outcome, messages = last_resort(self._builder, outcome, job, self._codec, error)
        self._failpoints.hit("before_publish")
        durable = job.progress.durable if job is not None else []
        if self._atomic is not None:
            await self._publish(lambda: self._together(messages, job, record), record)
            self._failpoints.hit("after_publish")
        else:
            await self._publish(lambda: self._publisher.publish(messages), record)
            self._failpoints.hit("after_publish")
            if job is not None and self._guard is not None:
                durable.append(self._marker(job, record))
            if job is not None:
                durable.extend(write() for write in job.progress.with_outcome)
        await wait_all(durable)
        self._failpoints.hit("after_marker")
        durable.clear()
        self._reporter.report(outcome, job)
        for ack in self._deliveries.finish(record.position):
            await ack()

    def forget(self, record: SourceRecord) -> None:
        """Give a record up without acking it: whoever consumes it next serves it."""
        self._deliveries.forget(record.position)

    async def acknowledge(self, record: SourceRecord) -> None:
        """A record that needs no outcome of its own (its request is already done)."""
        for ack in self._deliveries.finish(record.position):
            await ack()

    def _marker(self, job: Job, record: SourceRecord) -> Awaitable[object] | None:
        assert self._guard is not None  # noqa: S101 (callers check)
        return self._guard.end(job.partner_id, job.request_id, record.position, job.replay_count)

    async def _together(
        self, messages: list[OutMessage], job: Job | None, record: SourceRecord
    ) -> None:
        """The outcome and its done marker, in one transaction."""
        assert self._atomic is not None  # noqa: S101 (callers check)
        with self._atomic.together():
            sent: list[Awaitable[object] | None] = list(self._atomic.send(messages))
            if job is not None and self._guard is not None:
                sent.append(self._marker(job, record))
            if job is not None:
                sent.extend(write() for write in job.progress.with_outcome)
        await wait_all(sent)

    async def _publish(self, send: Callable[[], Awaitable[None]], record: SourceRecord) -> None:
        attempts = self._config.publish_attempts
        for attempt in range(1, attempts + 1):
            try:
                await send()
            except Exception as exc:  # the broker's answer, whatever its type
                if attempt == attempts:
                    raise FatalError(
                        f"cannot publish outcomes after {attempt} attempts: {exc}"
                    ) from exc
                log.warning(
                    "publish failed, retrying",
                    extra={**record_fields(record), "attempt": attempt, "error": str(exc)},
                )
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
            else:
                return
