"""The batch lane: `priority: batch` requests answered through Message Batches, at
half price, without holding back anything else.

A request is handed over durably, then its record is acknowledged: hours-long
batches never hold back the commit of interactive requests on its partition.
Every step writes what it did to the state log's `batches` table first, so a
worker killed anywhere leaves what its partition's next owner needs:

1. handed over: a request entry (its record as it arrived), then the ack;
2. before the create call: a batch entry, `submitting`, naming its requests;
3. after it: the entry `submitted`, with the upstream batch id;
4. polled with backoff until it ended; its results read;
5. each request answered (its outcome and the removal of its entry are one
   transaction on Kafka), then the batch entry removed.

A `submitting` entry found after a crash, or a create call that failed in a
way that may have created the batch anyway (a timeout, a 5xx), may or may not
have reached the API (there is no idempotency key): the key's batches created
since are listed, and each one, once ended, is searched for the entry's
custom_ids. Only when none has them is the batch submitted again: never twice.

A rebalance cancels a batch's polling, never its answering: the answers under
way are counted as running on their partition, which the rebalance waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from pipeline import messages
from pipeline.config import BatchSettings
from pipeline.errors import RequestError, SecretError
from pipeline.failpoints import Failpoints
from pipeline.lifecycle import batching as b
from pipeline.lifecycle.batchanswers import Answers, Table, settled
from pipeline.lifecycle.batchcalls import BatchCalls, Unusable, fields
from pipeline.lifecycle.batching import BATCH, REQUEST
from pipeline.lifecycle.completion import Completion
from pipeline.lifecycle.tasks import Running, Supervisor
from pipeline.ops.metrics import Metrics
from pipeline.records import Job, SourceRecord
from pipeline.upstream.batches import BatchApi
from pipeline.upstream.keys import ApiKeys

log = logging.getLogger("pipeline.lifecycle.batchlane")


class Readmit(Protocol):
    def readmit(self, record: Any, replay_count: int) -> Any: ...


def readmit(intake: Readmit, cid: str, value: Mapping[str, Any]) -> Job | RequestError | None:
    """A handed-over request's job again, from its state entry: the RequestError
    that refuses it now (its partner removed, its rules changed), or None when
    it cannot be read now (kept for the partition's next adoption)."""
    record = b.entry_record(value)
    try:
        admitted = intake.readmit(record, int(value.get("rc") or 0))
    except RequestError as exc:
        return exc
    except Exception as exc:  # a schema registry away, say: not the request's fault
        log.warning(
            "a handed-over batch request cannot be read now: kept for later",
            extra={"custom_id": cid, "topic": record.topic, "error": str(exc)},
        )
        return None
    job = Job(admitted)
    job.progress.batch = True
    return job


class BatchLane:
    def __init__(
        self,
        *,
        table: Table,
        api: BatchApi,
        keys: ApiKeys,
        intake: Readmit,
        answers: Answers,
        metrics: Metrics,
        config: BatchSettings,
        writer: str,
        failpoints: Failpoints | None = None,
        mono: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._table = table
        self._keys = keys
        self._intake = intake
        self._answers = answers
        self._metrics = metrics
        self.config = config
        self._writer = writer
        self._failpoints = failpoints or Failpoints()
        self._calls = BatchCalls(api, config.poll_s, metrics, self._failpoints, mono)
        self._mono = mono
        self._wall = wall
        self._packer = b.Packer(config.max_requests, config.max_wait_s, mono)
        self._jobs: dict[str, Job] = {}  # custom_id -> the job, for every request owned here
        #: batch entry id -> the entry and the task living it (submit, poll, answer)
        self._open: dict[str, tuple[b.BatchEntry, asyncio.Task[None]]] = {}
        self._answering: set[str] = set()  # batch ids whose answers are being written
        self._owned: set[b.Tp] = set()
        self._wake = asyncio.Event()
        self._tasks = Supervisor("batch lane")
        self._completion: Completion | None = None
        self._running = Running()
        self._owns: Callable[[SourceRecord], bool] = lambda record: True

    def bind(
        self,
        completion: Completion,
        requeue: Callable[[Job], None],
        running: Running,
        owns: Callable[[SourceRecord], bool],
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        """The dispatcher's completion, its way to queue a request to be served
        interactively, its count of work a rebalance waits for, whether a record's
        partition is still its own, and what a failure of the lane does."""
        self._completion, self._running, self._owns = completion, running, owns
        self._answers.requeue = requeue
        self._answers.finish = completion.finish
        self._tasks = Supervisor("batch lane", on_fatal)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks.spawn(self._close_loop(), "batch-closer")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop submitting and polling at once; answers being written get `grace_s`."""
        for batch_id, (_, task) in list(self._open.items()):
            if batch_id not in self._answering:
                task.cancel()
        await self._tasks.stop(grace_s)
        self._open.clear()

    def _gauges(self) -> None:
        self._metrics.batch_open.set(len(self._open))
        self._metrics.batch_waiting.set(len(self._packer))

    # -- ownership -------------------------------------------------------------------

    def accepts(self, job: Job) -> bool:
        now_ms = int(self._wall() * 1000)
        return b.eligible(job, now_ms=now_ms, max_wait_s=self.config.max_wait_s) is None

    def revoke(self, tps: Iterable[b.Tp]) -> None:
        """Partitions gone to another worker: their batches are its to finish (a
        batch whose answers are being written finishes them first)."""
        gone = set(tps)
        self._owned -= gone
        self._packer.drop(gone)
        for cid, job in list(self._jobs.items()):
            if (job.record.topic, job.record.partition) in gone:
                del self._jobs[cid]
                self._answers.release(job)
        for batch_id, (entry, task) in list(self._open.items()):
            if entry.tp in gone and batch_id not in self._answering:
                task.cancel()
                del self._open[batch_id]
        self._gauges()

    def adopt(self, tps: Iterable[b.Tp]) -> None:
        """Partitions assigned (the state log read to now): take up the requests and
        batches their previous owners left."""
        new = set(tps) - self._owned
        self._owned |= set(tps)
        if not new:
            return
        batches, requests = b.left_over(self._table.items(), new)
        batches = [e for e in batches if e.id not in self._open]
        batched = {cid for e in batches for cid in e.cids}
        for cid, value in requests:
            job = None if cid in self._jobs else readmit(self._intake, cid, value)
            if isinstance(job, RequestError):
                self._tasks.spawn(self._answers.refuse(cid, value, job), f"refuse-{cid}")
            elif job is not None:
                self._answers.reserve(job)
                self._jobs[cid] = job
                if cid not in batched:
                    self._pack(cid, job, str(value.get("kr") or ""))
        for entry in batches:
            self._run(entry)
        if batches or self._packer.groups:
            extra = {"batches": len(batches), "waiting": len(self._packer)}
            log.info("batch lane took up its partitions' batches", extra=extra)
        self._gauges()
        self._wake.set()

    # -- taking a request ---------------------------------------------------------------

    async def take(self, job: Job) -> None:
        """Hand a request over durably, then ack its record."""
        cid = b.custom_id(job.partner_id, job.request_id)
        key_ref = job.admitted.partner.api_key_ref or ""
        with self._running.on((job.record.topic, job.record.partition)):
            if self._table.get(REQUEST + cid) is None:
                entry = b.request_entry(job, key_ref, self._writer, int(self._wall() * 1000))
                await settled(self._table.put(REQUEST + cid, entry))
                if not self._owns(job.record) and self._completion is not None:
                    self._answers.release(job)  # revoked meanwhile: its next owner finds it
                    self._completion.forget(job.record)
                    return
                self._jobs[cid] = job
                self._pack(cid, job, key_ref)
            else:
                self._answers.release(job)  # handed over before: its first copy holds the budget
            if self._completion is not None:
                await self._completion.acknowledge(job.record)
        self._gauges()

    def _pack(self, cid: str, job: Job, key_ref: str) -> None:
        size = len(messages.json_body(job.admitted.params)) + 100
        tp = (job.record.topic, job.record.partition)
        closed = self._packer.add(key_ref, tp, cid, job, size)
        if closed is not None:
            self._submit(key_ref, tp, closed)
        self._wake.set()

    async def _close_loop(self) -> None:
        while True:
            due, next_s = self._packer.due()
            for key_ref, tp, group in due:
                self._submit(key_ref, tp, group)
            self._gauges()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(next_s if next_s is not None else 3600.0):
                    await self._wake.wait()

    # -- a batch's life ----------------------------------------------------------------

    def _submit(self, key_ref: str, tp: b.Tp, group: b.Group) -> None:
        entry = b.BatchEntry(
            id=secrets.token_hex(8),
            tp=tp,
            key_ref=key_ref,
            cids=list(group.jobs),
            state=b.BatchState.SUBMITTING,
            started_ms=int(self._wall() * 1000),
            writer=self._writer,
        )
        self._run(entry, fresh=True)

    def _run(self, entry: b.BatchEntry, fresh: bool = False) -> None:
        task = self._tasks.spawn(self._life(entry, fresh), f"batch-{entry.id}")
        self._open[entry.id] = (entry, task)
        task.add_done_callback(lambda t: self._ended(entry.id, t))
        self._gauges()

    def _ended(self, batch_id: str, task: asyncio.Task[None]) -> None:
        if batch_id in self._open and self._open[batch_id][1] is task:
            del self._open[batch_id]
        self._gauges()

    async def _life(self, entry: b.BatchEntry, fresh: bool) -> None:
        """Submit (or find what a crashed worker submitted), poll, answer."""
        try:
            api_key = self._keys.for_ref(entry.key_ref or None)
            if fresh:
                await settled(self._table.put(BATCH + entry.id, entry.to_json()))
                self._failpoints.hit("batch_before_submit")
            results: list[dict[str, Any]] | None = None
            if entry.state is b.BatchState.SUBMITTING:
                found: tuple[str, list[dict[str, Any]] | None] | None = None
                if not fresh:
                    found = await self._calls.find(entry, api_key)
                if found is None:
                    requests = [
                        {"custom_id": cid, "params": self._jobs[cid].admitted.params}
                        for cid in entry.cids
                        if cid in self._jobs
                    ]
                    found = await self._calls.submit(entry, api_key, requests)
                    self._failpoints.hit("batch_after_submit")
                    self._dispatched(entry)
                entry.upstream, results = found
                entry.state = b.BatchState.SUBMITTED
                await settled(self._table.put(BATCH + entry.id, entry.to_json()))
                log.info("batch submitted", extra=fields(entry))
            if results is None:
                results = await self._calls.results(entry, api_key)
                self._failpoints.hit("batch_after_results")
        except (Unusable, SecretError) as exc:
            log.warning(
                "batch abandoned: served interactively", extra={**fields(entry), "why": str(exc)}
            )
            results = [{"custom_id": c, "result": {"type": "canceled"}} for c in entry.cids]
        await self._answer(entry, results)

    def _dispatched(self, entry: b.BatchEntry) -> None:
        now = self._mono()
        for cid in entry.cids:
            job = self._jobs.get(cid)
            if job is not None and job.progress.first_dispatch_mono is None:
                job.progress.first_dispatch_mono = now

    async def _answer(self, entry: b.BatchEntry, results: list[dict[str, Any]]) -> None:
        """Each request's outcome; then the batch entry goes, once nothing of it is
        left to answer here (a request that cannot be read now keeps it)."""
        self._answering.add(entry.id)
        try:
            with self._running.on(entry.tp):
                jobs = {c: j for c in entry.cids if (j := self._jobs.pop(c, None)) is not None}
                await self._answers.answer_all(jobs, results)
        finally:
            self._answering.discard(entry.id)
        if self._owned and entry.tp not in self._owned:
            return  # its partition left meanwhile: its next owner answers the rest
        left = [c for c in entry.cids if c not in jobs and self._table.get(REQUEST + c)]
        if left:
            log.warning("batch kept: requests of it cannot be read now", extra=fields(entry))
            return
        await settled(self._table.remove(BATCH + entry.id))
        log.info("batch answered", extra=fields(entry))
