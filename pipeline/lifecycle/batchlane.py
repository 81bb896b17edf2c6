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

A `submitting` entry found after a crash may or may not have reached the API
(there is no idempotency key): the key's batches created since are listed, and
each one that ended is searched for the entry's custom_ids. Only when none has
them is the batch submitted again: never twice.
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
from pipeline.errors import SecretError
from pipeline.failpoints import Failpoints
from pipeline.lifecycle import batching as b
from pipeline.lifecycle.batchanswers import Answers, Table, settled
from pipeline.lifecycle.batchcalls import BatchCalls, Unusable, fields
from pipeline.lifecycle.batching import BATCH, REQUEST
from pipeline.lifecycle.completion import Completion
from pipeline.lifecycle.outcomes import Outcome
from pipeline.lifecycle.tasks import Running
from pipeline.ops.metrics import Metrics
from pipeline.records import Job
from pipeline.upstream.batches import BatchApi
from pipeline.upstream.keys import ApiKeys

log = logging.getLogger("pipeline.lifecycle.batchlane")

#: How many of a batch's requests are answered at once.
ANSWERING = 32


class Readmit(Protocol):
    def readmit(self, record: Any, replay_count: int) -> Any: ...


def readmit(intake: Readmit, cid: str, value: Mapping[str, Any]) -> Job | None:
    """A handed-over request's job again, from its state entry (None: unreadable now)."""
    record = b.entry_record(value)
    try:
        admitted = intake.readmit(record, int(value.get("rc") or 0))
    except Exception as exc:  # the partner left, or its schema cannot be read now
        log.warning(
            "a handed-over batch request cannot be read again: kept for later",
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
        self._open: dict[str, asyncio.Task[None]] = {}  # batch entry id -> its task
        self._owned: set[b.Tp] = set()
        self._wake = asyncio.Event()
        self._closer: asyncio.Task[None] | None = None
        self._completion: Completion | None = None

    def bind(
        self, completion: Completion, requeue: Callable[[Job], None], running: Running
    ) -> None:
        """The dispatcher's completion, its way to queue a request to be served
        interactively, and its count of work a rebalance waits for."""
        self._completion = completion
        self._answers.requeue = requeue

        async def finish(outcome: Outcome, job: Job) -> None:
            with running.on((job.record.topic, job.record.partition)):
                await completion.finish(outcome, job)

        self._answers.finish = finish

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._closer = asyncio.create_task(self._close_loop(), name="batch-closer")

    async def stop(self) -> None:
        tasks = [*self._open.values(), *([self._closer] if self._closer else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._open.clear()
        self._closer = None

    def _gauges(self) -> None:
        self._metrics.batch_open.set(len(self._open))
        self._metrics.batch_waiting.set(len(self._packer))

    # -- ownership -------------------------------------------------------------------

    def accepts(self, job: Job) -> bool:
        tp = (job.record.topic, job.record.partition)
        now_ms = int(self._wall() * 1000)
        return b.eligible(job, now_ms=now_ms, max_wait_s=self.config.max_wait_s) is None and (
            not self._owned or tp in self._owned
        )

    def revoke(self, tps: Iterable[b.Tp]) -> None:
        """Partitions gone to another worker: their batches are its to finish."""
        gone = set(tps)
        self._owned -= gone
        self._packer.drop(gone)
        for cid, job in list(self._jobs.items()):
            if (job.record.topic, job.record.partition) in gone:
                del self._jobs[cid]
                self._answers.release(job)
        for batch_id, task in list(self._open.items()):
            entry = self._entry(batch_id)
            if entry is None or entry.tp in gone:
                task.cancel()
                self._open.pop(batch_id, None)
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
            if job is None:
                continue
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
        if self._table.get(REQUEST + cid) is None:
            entry = b.request_entry(job, key_ref, self._writer, int(self._wall() * 1000))
            await settled(self._table.put(REQUEST + cid, entry))
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
        task = asyncio.create_task(self._life(entry, fresh), name=f"batch-{entry.id}")
        self._open[entry.id] = task
        task.add_done_callback(lambda t: self._ended(entry.id, t))
        self._gauges()

    def _ended(self, batch_id: str, task: asyncio.Task[None]) -> None:
        if self._open.get(batch_id) is task:
            del self._open[batch_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("a batch failed", exc_info=task.exception(), extra={"batch": batch_id})
        self._gauges()

    def _entry(self, batch_id: str) -> b.BatchEntry | None:
        value = self._table.get(BATCH + batch_id)
        return b.BatchEntry.from_json(value) if isinstance(value, dict) else None

    async def _life(self, entry: b.BatchEntry, fresh: bool) -> None:
        try:
            api_key = self._keys.for_ref(entry.key_ref or None)
            if fresh:
                await settled(self._table.put(BATCH + entry.id, entry.to_json()))
                self._failpoints.hit("batch_before_submit")
            if entry.state is b.BatchState.SUBMITTING:
                found = None if fresh else await self._calls.find(entry, api_key)
                if found is not None:
                    entry.upstream, results = found
                    await self._submitted(entry)
                    await self._answer(entry, results)
                    return
                entry.upstream = await self._create(entry, api_key)
                self._failpoints.hit("batch_after_submit")
                await self._submitted(entry)
                log.info("batch submitted", extra=fields(entry))
            results = await self._calls.results(entry, api_key)
            self._failpoints.hit("batch_after_results")
            await self._answer(entry, results)
        except (Unusable, SecretError) as exc:
            await self._unbatch(entry, str(exc))

    async def _submitted(self, entry: b.BatchEntry) -> None:
        entry.state = b.BatchState.SUBMITTED
        await settled(self._table.put(BATCH + entry.id, entry.to_json()))

    async def _create(self, entry: b.BatchEntry, api_key: str) -> str:
        requests = [
            {"custom_id": cid, "params": self._jobs[cid].admitted.params}
            for cid in entry.cids
            if cid in self._jobs
        ]
        upstream = await self._calls.create(entry, api_key, requests)
        now = self._mono()
        for cid in entry.cids:
            job = self._jobs.get(cid)
            if job is not None and job.progress.first_dispatch_mono is None:
                job.progress.first_dispatch_mono = now
        return upstream

    async def _answer(self, entry: b.BatchEntry, results: list[dict[str, Any]]) -> None:
        by_cid = {r["custom_id"]: r.get("result") or {} for r in results}
        slots = asyncio.Semaphore(ANSWERING)

        async def one(cid: str) -> None:
            async with slots:
                job = self._jobs.pop(cid, None)
                if job is not None:  # else answered already, or its partition left
                    await self._answers.answer(cid, job, by_cid.get(cid, {"type": "expired"}))

        await asyncio.gather(*(one(cid) for cid in entry.cids))
        if self._owned and entry.tp not in self._owned:
            return  # its partition left meanwhile: its next owner answers the rest
        await settled(self._table.remove(BATCH + entry.id))
        log.info("batch answered", extra=fields(entry))

    async def _unbatch(self, entry: b.BatchEntry, why: str) -> None:
        """A batch that cannot be used: each of its requests served interactively."""
        log.warning("batch abandoned: served interactively", extra={**fields(entry), "why": why})
        await self._answer(
            entry, [{"custom_id": c, "result": {"type": "canceled"}} for c in entry.cids]
        )
