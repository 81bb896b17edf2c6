"""The requests waiting to be sent: fair queues per upstream key, each with its deadline.

Pushing a request files it under its partner's upstream key (the scheduler
shares a key fairly among its partners), arms its deadline and updates the
depth gauge and the partner's pause; popping one disarms its deadline. A request
whose deadline passes while it waits leaves by `on_expired`, never sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from pipeline.lifecycle.pausing import Pausing
from pipeline.lifecycle.scheduler import KeyedFairQueue, OutputEstimate
from pipeline.ops.metrics import Metrics
from pipeline.partners import Registry
from pipeline.records import Job
from pipeline.upstream.keys import ApiKeys

#: The scheduler's gates: (partner_id, job) and (key_id, job, partner is new).
PartnerGate = Callable[[str, Job], bool]
KeyGate = Callable[[str, Job, bool], bool]


class Backlog:
    def __init__(
        self,
        *,
        registry: Registry,
        keys: ApiKeys,
        metrics: Metrics,
        pausing: Pausing,
        on_expired: Callable[[Job], None],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._keys = keys
        self._metrics = metrics
        self._pausing = pausing
        self._on_expired = on_expired
        self._wall = wall
        self.fairness = OutputEstimate()
        self._queue: KeyedFairQueue[str, str, Job] = KeyedFairQueue(
            price=lambda partner_id, job: self.fairness.cost(partner_id, job.admitted)
        )

    def __len__(self) -> int:
        return len(self._queue)

    def depth(self, partner_id: str) -> int:
        return self._queue.depth(partner_id)

    def push(self, job: Job, front: bool = False) -> None:
        """Queue a request (a retry goes to the `front` of its partner's lane)."""
        partner_id = job.partner_id
        partner = self._registry.get(partner_id) or job.admitted.partner
        job.progress.key_id = self._keys.queue_key(partner, job.progress, int(self._wall() * 1000))
        cost = self.fairness.cost(partner_id, job.admitted)
        self._queue.push(job.progress.key_id, partner_id, job, cost, partner.weight, front=front)
        self._changed(partner_id)
        deadline = job.admitted.deadline_ms
        if deadline is not None:
            delay = max(0.0, deadline / 1000 - self._wall())
            loop = asyncio.get_running_loop()
            job.progress.deadline_timer = loop.call_later(delay, self._expire, job)

    def pop(self, partner_ok: PartnerGate, key_ok: KeyGate) -> tuple[str, Job] | None:
        """The next request the scheduler picks among those the gates let through."""
        picked = self._queue.pop(partner_ok, key_ok)
        if picked is not None:
            partner_id, job = picked
            self._changed(partner_id)
            disarm(job)
        return picked

    def rekey(self, partner_id: str) -> None:
        """The partner's upstream key changed: its queued requests move to the new
        key's lane (in their order), but for those pinned to the old one."""
        jobs = self._queue.remove_where(lambda job: job.partner_id == partner_id)
        for job in jobs:
            disarm(job)
            self.push(job)

    def remove(self, predicate: Callable[[Job], bool]) -> list[Job]:
        removed = self._queue.remove_where(predicate)
        for job in removed:
            disarm(job)
        for partner_id in {job.partner_id for job in removed}:
            self._changed(partner_id)
        return removed

    def _expire(self, job: Job) -> None:
        job.progress.deadline_timer = None
        if self._queue.remove_where(lambda queued: queued is job):
            self._changed(job.partner_id)
            self._on_expired(job)

    def _changed(self, partner_id: str) -> None:
        depth = self._queue.depth(partner_id)
        self._metrics.queue_depth.labels(partner_id).set(depth)
        self._pausing.queued(partner_id, depth)


def disarm(job: Job) -> None:
    """Cancel a request's deadline timer (it is being sent, or dropped)."""
    timer, job.progress.deadline_timer = job.progress.deadline_timer, None
    if timer is not None:
        timer.cancel()
