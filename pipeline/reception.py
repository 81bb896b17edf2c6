"""A record Kafka delivered becomes one admitted request, its outcome, or nothing.

Kafka may deliver a record again (a rebalance, a seek, a crash before the commit):
each delivery is acked, but only one is worked on (`Deliveries`). A new record
goes through intake (partner, signature, schema, contract checks); a refused one
goes straight to its outcome. The replay guard then tells a request already
served before a crash (acked, nothing else) from a second copy of a request_id
(refused) and from a new request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from pipeline.attempt import job_fields
from pipeline.completion import Arrival, Completion, Deliveries, record_fields
from pipeline.errors import Duplicate, SchemaError, Stage, internal
from pipeline.examiner import Examiner
from pipeline.intake import Intake, Rejected, key_request_id
from pipeline.metrics import Metrics
from pipeline.outcomes import Outcome, OutcomeBuilder
from pipeline.partners import partner_of_requests_topic
from pipeline.pausing import Pausing
from pipeline.records import HEAVY_BYTES, AckFn, Admitted, Job, SourceRecord
from pipeline.schemas import Codec
from pipeline.state import ReplayGuard, Seen

log = logging.getLogger("pipeline.reception")

Spawn = Callable[[Coroutine[Any, Any, Any], str], object]


class Reception:
    def __init__(
        self,
        *,
        deliveries: Deliveries,
        codec: Codec,
        intake: Intake,
        guard: ReplayGuard | None,
        state_synced: Callable[[], Awaitable[None]] | None = None,
        builder: OutcomeBuilder,
        completion: Completion,
        metrics: Metrics,
        spawn: Spawn,
        pausing: Pausing | None = None,
        examiner: Examiner | None = None,
    ) -> None:
        self._examiner = examiner
        self._pausing = pausing
        self._metrics = metrics
        self._deliveries = deliveries
        self._codec = codec
        self._intake = intake
        self._guard = guard
        self._state_synced = state_synced
        self._builder = builder
        self._completion = completion
        self._spawn = spawn

    async def receive(self, record: SourceRecord, ack: AckFn) -> Job | None:
        """The request to queue, or None when this delivery needs no more work."""
        if log.isEnabledFor(logging.DEBUG):
            extra = {**record_fields(record), "request_id": key_request_id(record)}
            log.debug("record received", extra=extra)
        arrival = self._deliveries.arrive(record.position, ack)
        if arrival is Arrival.DONE:
            await ack()
            return None
        if arrival is Arrival.IN_FLIGHT:
            return None
        admitted = await self._admit(record)
        if admitted is None:
            return None
        job = Job(admitted)
        if self._state_synced is not None:
            # After a rebalance: what the partition's last owner served is known first.
            await self._state_synced()
        if self._guard is not None and not await self._guarded(self._guard, job):
            return None
        return job

    async def _admit(self, record: SourceRecord) -> Admitted | None:
        if len(record.value or b"") > HEAVY_BYTES:
            result = await self._admit_heavy(record)
        else:
            if record.value is not None and self._codec.needs_registry(record.value):
                try:
                    self._intake.authenticate(record)
                except Rejected:
                    pass  # refused just below, without a registry call
                else:
                    # Only a record whose signature holds may cost a schema-registry
                    # call (off the event loop, with a timeout, then cached).
                    await self._codec.prefetch(record.value)
            result = self._admit_now(record)
        if isinstance(result, Outcome):
            self._end(result)
            return None
        return result

    def _admit_now(self, record: SourceRecord) -> Admitted | Outcome:
        """The admitted request, or the outcome of refusing it."""
        try:
            return self._intake.admit_verified(self._intake.authenticate(record))
        except Exception as exc:
            return self._refusal(record, exc)

    async def _admit_heavy(self, record: SourceRecord) -> Admitted | Outcome:
        """A record of megabytes: its signature checked in a thread (hashing releases
        the GIL), decoded and checked in the examiner process (fastavro and json do
        not), and only then admitted here."""
        if self._examiner is None:
            return await asyncio.to_thread(self._admit_now, record)
        try:
            verified = await asyncio.to_thread(self._intake.authenticate, record)
            data = record.value or b""
            if self._codec.needs_registry(data):
                await self._codec.prefetch(data)
            try:
                writer, offset = self._codec.framing("ClaudeRequest", data)
            except SchemaError as exc:  # the header says enough: no process needed
                return self._intake.admit_verified(verified, exc)
            reader = self._codec.store.current["ClaudeRequest"].parsed
            partner = verified.partner
            examined = await self._examiner.examine(writer, reader, data, offset, partner)
            return self._intake.admit_verified(verified, examined)
        except Exception as exc:
            return self._refusal(record, exc)

    def _refusal(self, record: SourceRecord, exc: Exception) -> Outcome:
        if isinstance(exc, Rejected):
            return self._builder.failure(
                record,
                exc.error,
                partner_id=exc.partner_id,
                request_id=exc.request_id,
                request=exc.request,
                respond=exc.respond,
                verified=exc.verified,
                replay_count=exc.replay_count,
            )
        # A bug must cost one record, not the partition.
        err = internal(Stage.INTAKE, exc, log, record_fields(record))
        return self._builder.failure(
            record,
            err,
            partner_id=partner_of_requests_topic(record.topic),
            request_id=key_request_id(record),
        )

    async def _guarded(self, guard: ReplayGuard, job: Job) -> bool:
        """Apply replay protection; False if the record needs no further work."""
        record = job.record
        verdict = guard.check(job.partner_id, job.request_id, record.position, job.replay_count)
        if verdict.seen is Seen.REDELIVERED_DONE:
            # Served before a crash or rebalance: no second call, no second outcome.
            await self._completion.acknowledge(record)
            log.info("redelivered record already served", extra=job_fields(job))
            return False
        if verdict.seen is Seen.REPLAY:
            # A producer retry without idempotence, or a replayed record: the
            # original's outcome is the partner's; this copy leaves only an audit
            # entry (no response, no usage record, no call to Claude).
            first = verdict.first
            where = f"{first[0]}[{first[1]}]@{first[2]}" if first else "earlier"
            err = Duplicate(
                f"a later copy of request_id {job.request_id!r}, first received at {where}: "
                "not served again"
            )
            self._metrics.duplicates.labels(job.partner_id).inc()
            log.info("duplicate request_id: audit entry only", extra=job_fields(job))
            # no job: the guard's entry belongs to the first record, not this one
            self._end(
                self._builder.failure(
                    record,
                    err,
                    partner_id=job.partner_id,
                    request_id=job.request_id,
                    request=job.request,
                    replay_count=job.replay_count,
                    respond=False,
                    verified=True,
                )
            )
            return False
        guard.begin(job.partner_id, job.request_id, record.position, job.replay_count)
        return True

    def _end(self, outcome: Outcome) -> None:
        record = outcome.record
        pid = partner_of_requests_topic(record.topic)
        if self._pausing is not None and pid:
            self._pausing.refusing(pid, +1)
        self._spawn(self._finish(outcome, pid), f"outcome-{record.partition}-{record.offset}")

    async def _finish(self, outcome: Outcome, pid: str | None) -> None:
        """Publish a refused record's outcome; until then it counts toward its
        partner's bound (see Pausing)."""
        try:
            await self._completion.finish(outcome)
        finally:
            if self._pausing is not None and pid:
                self._pausing.refusing(pid, -1)
