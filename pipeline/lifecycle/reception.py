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
from typing import Any, Protocol, cast

from pipeline.errors import Duplicate, Misplaced, SchemaError, Stage, internal
from pipeline.lifecycle.attempt import job_fields
from pipeline.lifecycle.completion import Arrival, Completion, Deliveries, record_fields
from pipeline.lifecycle.examiner import Examiner
from pipeline.lifecycle.intake import Intake, Rejected, key_request_id
from pipeline.lifecycle.outcomes import Outcome, OutcomeBuilder
from pipeline.lifecycle.pausing import Pausing
from pipeline.lifecycle.responsecache import ResponseCache
from pipeline.lifecycle.tasks import Running
from pipeline.ops.metrics import Metrics
from pipeline.partners import partner_of_requests_topic
from pipeline.records import HEAVY_BYTES, AckFn, Admitted, Job, SourceRecord
from pipeline.schemas import Codec
from pipeline.state import ReplayGuard, Seen
from pipeline.upstream.claude import UpstreamResult

log = logging.getLogger("pipeline.lifecycle.reception")

Spawn = Callable[[Coroutine[Any, Any, Any], str], object]


class Homes(Protocol):
    """Whether a misplaced record's partner should be told (pipeline/kafka/homes.py)."""

    async def unclaimed(
        self, partner_id: str, request_id: str, topic: str, homes: list[int], written_ms: int
    ) -> bool: ...


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
        deliver: Callable[[Job], None],
        owned: Callable[[SourceRecord], bool],
        examiner: Examiner | None = None,
        homes: Homes | None = None,
        responses: ResponseCache | None = None,
        running: Running | None = None,
    ) -> None:
        self._homes = homes
        self._responses = responses
        self._running = running or Running()
        #: Heavy records, examined in the examiner process (without one: like any other).
        self._lane = (
            None
            if examiner is None
            else HeavyLane(
                self, intake, codec, examiner, deliveries, spawn, deliver, owned, pausing
            )
        )
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
        """The request to queue, or None when this delivery needs no more work here
        (or, for a heavy record, when it is being examined: its job is delivered
        later, without holding up the records behind it)."""
        if log.isEnabledFor(logging.DEBUG):
            extra = {**record_fields(record), "request_id": key_request_id(record)}
            log.debug("record received", extra=extra)
        arrival = self._deliveries.arrive(record.position, ack)
        if arrival is Arrival.DONE:
            await ack()
            return None
        if arrival is Arrival.IN_FLIGHT:
            return None
        if self._lane is not None and len(record.value or b"") > HEAVY_BYTES:
            self._lane.take(record)
            return None
        result = await self._admit(record)
        return None if result is None else await self.job(result)

    async def job(self, admitted: Admitted) -> Job | None:
        """An admitted request's job, unless the replay guard says it needs no work."""
        job = Job(admitted)
        if self._state_synced is not None:
            # After a rebalance: what the partition's last owner served is known first.
            await self._state_synced()
        if self._guard is not None and not await self._guarded(self._guard, job):
            return None
        cached = None if self._responses is None else self._responses.lookup(job)
        if cached is not None:  # an exact repeat: answered without calling Claude
            self._spawn(self._answer_cached(job, cached), f"cached-{job.request_id}")
            return None
        return job

    async def _answer_cached(self, job: Job, cached: UpstreamResult) -> None:
        """Counted as running on its partition: a rebalance waits for it."""
        with self._running.on((job.record.topic, job.record.partition)):
            await self._completion.finish(self._builder.success(job, cached, 0), job)

    async def _admit(self, record: SourceRecord) -> Admitted | None:
        if record.value is not None and self._codec.needs_registry(record.value):
            try:
                self._intake.authenticate(record)
            except Rejected:
                pass  # refused just below, without a registry call
            else:
                # Only a record whose signature holds may cost a schema-registry
                # call (off the event loop, with a timeout, then cached).
                await self._codec.prefetch(record.value)
        result: Admitted | Outcome
        try:
            result = self._intake.admit_verified(self._intake.authenticate(record))
        except Exception as exc:
            if self.misplaced(record, exc):
                return None
            result = self.refused(record, exc)
        return self.admitted(result)

    def misplaced(self, record: SourceRecord, exc: Exception) -> bool:
        """Take a signed record refused for where it sits (see pipeline/kafka/homes.py):
        counted, then its outcome (answered or not) is decided off the stream.
        False for any other refusal."""
        if not (isinstance(exc, Rejected) and isinstance(exc.error, Misplaced)):
            return False
        pid = exc.partner_id or ""
        self._metrics.misplaced.labels(pid).inc()
        if self._homes is None or exc.request_id is None:
            return False  # refused as before: the dead letter only
        if self._pausing is not None:
            self._pausing.refusing(pid, +1)
        name = f"misplaced-{record.partition}-{record.offset}"
        self._spawn(self._misplaced(record, exc, pid, self._homes, exc.request_id), name)
        return True

    async def _misplaced(
        self, record: SourceRecord, exc: Rejected, pid: str, homes: Homes, request_id: str
    ) -> None:
        error = cast(Misplaced, exc.error)
        try:
            try:
                answer = await homes.unclaimed(
                    pid, request_id, error.topic, error.homes, record.timestamp_ms or 0
                )
            except Exception:  # the dead letter still goes out; the answer was a nicety
                log.warning("cannot tell a misplaced record from a replay", exc_info=True)
                answer = False
            if answer:
                exc.respond = True
                log.warning(
                    "a signed record outside its key's partition, and no copy at home: "
                    "its partner is told where the key belongs",
                    extra={**record_fields(record), "request_id": request_id},
                )
            outcome = await asyncio.to_thread(self.refused, record, exc)
            await self._completion.finish(outcome)
        finally:
            if self._pausing is not None:
                self._pausing.refusing(pid, -1)

    def admitted(self, result: Admitted | Outcome | None) -> Admitted | None:
        if isinstance(result, Outcome):
            self._end(result)
            return None
        return result

    def refused(self, record: SourceRecord, exc: Exception) -> Outcome:
        if isinstance(exc, Rejected):
            return exc.outcome(self._builder, record)
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


class HeavyLane:
    """Records over `HEAVY_BYTES`, taken in without holding up the stream.

    Faust hands records to one agent, one at a time, for every partner: awaiting a
    heavy record's examination there (about 45 ms of decoding, checking and
    encoding for ten thousand messages, more on a busy host) would hold up every
    partner's records behind it. So a heavy record is examined in a task of its
    own, heavy records in arrival order (one lock, FIFO: copies of one request_id
    are told apart in the order they came), and the job joins the queue when
    ready. Until then it counts toward its partner's bound (`Pausing.examining`):
    a partner sending nothing but heavy records is paused, not buffered in memory.
    """

    def __init__(
        self,
        reception: Reception,
        intake: Intake,
        codec: Codec,
        examiner: Examiner,
        deliveries: Deliveries,
        spawn: Spawn,
        deliver: Callable[[Job], None],
        owned: Callable[[SourceRecord], bool],
        pausing: Pausing | None,
    ) -> None:
        self._r = reception
        self._intake = intake
        self._codec = codec
        self._deliveries = deliveries
        self._spawn = spawn
        self._examiner = examiner
        self._deliver = deliver
        self._owned = owned
        self._pausing = pausing
        self._order = asyncio.Lock()

    def take(self, record: SourceRecord) -> None:
        pid = partner_of_requests_topic(record.topic)
        if self._pausing is not None and pid:
            self._pausing.examining(pid, +1)
        self._spawn(self._receive(record, pid), f"examine-{record.partition}-{record.offset}")

    async def _receive(self, record: SourceRecord, pid: str | None) -> None:
        try:
            async with self._order:
                result = await self._admit(record)
                if not self._owned(record):
                    # Revoked (or stopping) meanwhile: its next owner reads it again.
                    self._deliveries.forget(record.position)
                    return
                admitted = self._r.admitted(result)
                job = None if admitted is None else await self._r.job(admitted)
            if job is not None:
                self._deliver(job)
        finally:
            if self._pausing is not None and pid:
                self._pausing.examining(pid, -1)

    async def _admit(self, record: SourceRecord) -> Admitted | Outcome | None:
        """The signature checked in a thread (hashing releases the GIL), the value
        decoded and checked in the examiner process (fastavro and json do not), the
        rest here; a refusal's dead letter made in a thread."""
        intake, codec = self._intake, self._codec
        try:
            verified = await asyncio.to_thread(intake.authenticate, record)
            data = record.value or b""
            if codec.needs_registry(data):
                await codec.prefetch(data)
            try:
                writer, reader, offset = intake.frame(data)
            except SchemaError as exc:  # the header says enough: no process needed
                return intake.admit_verified(verified, exc)
            partner = verified.partner
            examined = await self._examiner.examine(writer, reader, data, offset, partner)
            return intake.admit_verified(verified, examined)
        except Exception as exc:
            if self._r.misplaced(record, exc):
                return None
            # Its dead letter hashes or seals the whole value: 10 ms for 10 MB,
            # which holds no GIL but would hold the loop.
            return await asyncio.to_thread(self._r.refused, record, exc)
