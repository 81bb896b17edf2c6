"""The request intake on librdkafka: the partner topics consumed outside the event loop.

librdkafka fetches, decodes and checks CRCs in its own threads, without the GIL.
One thread of ours (`pipeline.kafka.poller`) blocks in `poll()` (no busy polling)
and hands what arrived to the event loop in one call per batch. There:

- a lane per partner topic (`pipeline.kafka.lanes.Lanes`), taken in turn, so a
  flood's burst in a fetch does not stand in front of a light partner's record;
- a partner whose lane fills, or whose queue in the dispatcher does
  (`pause`/`resume`, the dispatcher's `FlowControl`), has its partitions paused in
  librdkafka, which drops what it prefetched of them and fetches from where the
  worker stopped taking when they resume: Kafka stays the buffer (a full queue
  also holds the partner's lane: what was handed over before the pause took
  effect waits in it);
- offsets are committed only up to the oldest record not done
  (`pipeline.kafka.offsets`), every `commit_interval_s` and when partitions leave;
- at a rebalance the thread waits while the worker finishes the revoked
  partitions' calls under way (`on_revoked`), commits what is done, then lets
  them go; their records still queued here are dropped unacked, for their next
  owner.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

from confluent_kafka import Message

from pipeline.config import Settings
from pipeline.factory import client_config
from pipeline.kafka.lanes import Lanes
from pipeline.kafka.offsets import TP, Offsets
from pipeline.kafka.poller import Poller
from pipeline.partners import REQUESTS_PREFIX
from pipeline.records import AckFn, Headers, SourceRecord

log = logging.getLogger("pipeline.kafka.consumer")

Handler = Callable[[SourceRecord, AckFn], Awaitable[None]]
RevokedHook = Callable[[Iterable[TP]], Awaitable[None]]
AssignedHook = Callable[[set[TP]], None]

#: The most a fetch asks of one partition. Small, so that a flooding partner's
#: records do not queue up by the thousand before the lanes see them.
FETCH_PARTITION_BYTES = 256 * 1024
#: The handler is called this many times before the pump lets other tasks run.
PUMP_TURN = 16
#: How stale the worker's view of a topic's partitions may get (CreatePartitions
#: is followed by a rebalance onto the new partitions within this).
METADATA_MAX_AGE_MS = 30_000
#: What the worker consumes: every partner's request topic, including one whose
#: partner was removed (its records get their dead letter: unknown_partner).
REQUEST_TOPICS = "^" + re.escape(REQUESTS_PREFIX) + ".+"
#: Reasons a partner's partitions are paused.
QUEUE, LANE = "queue", "lane"


def fetch_wait_ms(settings: Settings, partitions: int) -> int:
    """The request consumer's fetch max-wait with `partitions` to fetch: the broker
    profile's, or longer where the broker reads only the partitions it reaches
    within it (Tansu: `BrokerProfile.fetch_read_us_per_partition`). A wait set
    explicitly (`PIPELINE_FETCH_MAX_WAIT_MS`) is taken as it is."""
    profile = settings.broker_profile
    if settings.fetch_max_wait_ms is not None:
        return settings.fetch_max_wait_ms
    read_ms = math.ceil(partitions * profile.fetch_read_us_per_partition / 1000)
    return max(profile.fetch_max_wait_ms, read_ms)


def consumer_config(settings: Settings, partitions: int = 0) -> dict[str, Any]:
    """The request consumer's librdkafka configuration, for `partitions` request
    partitions (every partner's, the most one worker may own)."""
    t = settings.timings
    return {
        **client_config(settings),
        "group.id": settings.group_id,
        # Each topic's partitions dealt across the workers, so a busy partner's load
        # is shared. Sticky assignors balance only the total: a partner's four
        # partitions all landed on one of two workers here.
        "partition.assignment.strategy": "roundrobin",
        "session.timeout.ms": int(t.session_timeout_s * 1000),
        "heartbeat.interval.ms": int(t.heartbeat_interval_s * 1000),
        # committed here, by `Offsets`, only for work done
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": fetch_wait_ms(settings, partitions),
        "max.partition.fetch.bytes": FETCH_PARTITION_BYTES,
        # librdkafka prefetches up to this per partition: a lane's worth; and its
        # queue holds the largest record whole (one over this stopped every
        # partner's fetches: a 30 MB record held a steady partner 670 ms)
        "queued.min.messages": 256,
        "queued.max.messages.kbytes": max(65_536, 2 * settings.max_message_bytes // 1024),
        # a partition past those thresholds is fetched again after this; at
        # librdkafka's 1 s a flood's full queue held a light partner's records
        # 0.5-1 s (a fairness victim's p99 5.8x its p99 alone)
        "fetch.queue.backoff.ms": 10,
        "topic.metadata.refresh.interval.ms": METADATA_MAX_AGE_MS,
        # the dispatcher drains revoked partitions inside the rebalance
        "max.poll.interval.ms": max(300_000, int(settings.shutdown_grace_s * 2000)),
        # outcomes of aborted transactions are never requests, but a partner's
        # producer may be transactional: read what it committed
        "isolation.level": "read_committed",
    }


class RequestConsumer:
    """The worker's consumer of request topics, on the event loop (see the module
    docstring); `Poller` is its thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        handler: Handler,
        topics: Iterable[str],
        on_revoked: RevokedHook,
        on_assigned: AssignedHook,
        on_error: Callable[[BaseException], None],
        lane_max: int = 256,
        pattern: str = REQUEST_TOPICS,
    ) -> None:
        self._settings = settings
        self._handler = handler
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned
        self._on_error = on_error
        self._topics = sorted(set(topics))
        self._lanes = Lanes(_topic)
        self._lane_high = max(1, int(lane_max * 0.8))
        self._lane_drop = int(lane_max * 0.4)
        self._offsets = Offsets()
        self._owned: set[TP] = set()
        self._holds: dict[str, set[str]] = {}  # topic -> reasons its partitions are paused
        partitions = len(self._topics) * settings.topic_partitions
        self._poller = Poller(settings, consumer_config(settings, partitions), self, pattern)
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- what the worker asks -------------------------------------------------

    @property
    def topics(self) -> list[str]:
        return list(self._topics)

    @property
    def members(self) -> int:
        """Members of the group after the last rebalance."""
        return self._poller.members

    def owned(self) -> set[TP]:
        return set(self._owned)

    def partition_count(self, topic: str) -> int | None:
        return self._poller.counts.get(topic)

    def lane_depth(self, topic: str) -> int:
        return self._lanes.depth(topic)

    def subscribe(self, topics: Iterable[str]) -> bool:
        """`topics` exist now and are to be consumed (the pattern covers them; this
        has them picked up at once); True if that changed anything."""
        wanted = sorted(set(topics))
        if wanted == self._topics:
            return False
        self._topics = wanted
        self._poller.refresh()
        return True

    def pause(self, topic: str, reason: str = QUEUE) -> None:
        reasons = self._holds.setdefault(topic, set())
        if not reasons:
            self._poller.pause(self._partitions_of(topic))
        reasons.add(reason)
        if reason == QUEUE:  # what was fetched before librdkafka pauses waits here
            self._lanes.hold(topic)

    def resume(self, topic: str, reason: str = QUEUE) -> None:
        reasons = self._holds.get(topic)
        if not reasons or reason not in reasons:
            return
        reasons.discard(reason)
        if reason == QUEUE:
            self._lanes.release(topic)
            self._wakeup.set()
        if not reasons:
            del self._holds[topic]
            self._poller.resume(self._partitions_of(topic))

    def paused(self) -> set[str]:
        return set(self._holds)

    # -- start and stop -------------------------------------------------------

    async def start(self) -> None:
        self._poller.start()
        self._tasks = [
            asyncio.ensure_future(self._pump()),
            asyncio.ensure_future(self._commit_every(self._settings.timings.commit_interval_s)),
        ]

    async def stop(self) -> None:
        """Leave the group: what is done is committed, the rest is left for the next
        owner (the revoke runs here, through `revoking`)."""
        for task in self._tasks:
            task.cancel()
        await self._poller.stop()

    # -- called by the consumer thread -------------------------------------------

    async def arrived(self, messages: list[Message], fetched: float) -> None:
        owned, lanes = self._owned, self._lanes
        for message in messages:
            err = message.error()
            if err is not None:
                log.warning("request consumer: %s", err.str(), extra={"code": err.name()})
                continue
            topic = cast(str, message.topic())
            if (topic, message.partition()) not in owned:
                continue
            lanes.append((message, fetched))
            if lanes.depth(topic) >= self._lane_high:
                self.pause(topic, LANE)
        self._wakeup.set()

    async def assigned(self, tps: set[TP]) -> None:
        self._owned |= tps
        self._offsets.assigned(tps)
        self._poller.pause(tp for tp in tps if tp[0] in self._holds)
        self._on_assigned(tps)

    async def revoking(self, tps: set[TP]) -> dict[TP, int]:
        """Partitions leave: their fetched records are dropped unacked, the worker
        finishes their calls under way, and what is done is returned to commit."""
        self._owned -= tps
        dropped = self._lanes.remove(lambda item: (item[0].topic(), item[0].partition()) in tps)
        for topic in {t for t, _ in tps}:
            self.resume(topic, LANE)
        if dropped:
            log.info("dropped fetched records of revoked partitions", extra={"count": dropped})
        await self._on_revoked(tps)
        return self._offsets.positions(tps)

    async def forget(self, tps: set[TP]) -> None:
        self._offsets.revoked(tps)

    def uncommit(self, positions: dict[TP, int]) -> None:
        self._offsets.uncommit(positions)

    def failed(self, exc: BaseException) -> None:
        self._on_error(exc)

    # -- on the event loop ------------------------------------------------------

    async def _pump(self) -> None:
        lanes, offsets, handler = self._lanes, self._offsets, self._handler
        while True:
            if not lanes.ready():
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            for _ in range(PUMP_TURN):
                if not lanes.ready():
                    break
                message, fetched = lanes.popleft()
                topic = message.topic()
                if topic in self._holds and lanes.depth(topic) <= self._lane_drop:
                    self.resume(topic, LANE)
                tp = (topic, message.partition())
                offset = message.offset()
                if not offsets.delivered(tp, offset):
                    continue  # revoked while it waited here
                record = _record(message, fetched)
                try:
                    await handler(record, _Ack(offsets, tp, offset))
                except Exception:  # the intake must outlive any one record
                    where = {"topic": topic, "partition": tp[1], "offset": offset}
                    log.exception("handler raised", extra=where)
            await asyncio.sleep(0)

    async def _commit_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.commit()

    def commit(self) -> None:
        """Commit (asynchronously) what is done since the last commit."""
        positions = self._offsets.commits()
        if positions:
            self._poller.commit(positions)

    def _partitions_of(self, topic: str) -> list[TP]:
        return [tp for tp in self._owned if tp[0] == topic]


class _Ack:
    """A record's ack: its offset may be committed past (see `Offsets`)."""

    __slots__ = ("offset", "offsets", "tp")

    def __init__(self, offsets: Offsets, tp: TP, offset: int) -> None:
        self.offsets, self.tp, self.offset = offsets, tp, offset

    async def __call__(self) -> None:
        self.offsets.acked(self.tp, self.offset)


class PartnerFlow:
    """The dispatcher's `FlowControl`: a partner's whole queue pauses its topic."""

    def __init__(self, consumer: RequestConsumer, topic_of: Callable[[str], str]) -> None:
        self._consumer = consumer
        self._topic_of = topic_of

    def pause(self, partner_id: str) -> None:
        self._consumer.pause(self._topic_of(partner_id), QUEUE)

    def resume(self, partner_id: str) -> None:
        self._consumer.resume(self._topic_of(partner_id), QUEUE)


def _topic(item: tuple[Message, float]) -> str:
    return str(item[0].topic())


def _record(message: Message, fetched: float) -> SourceRecord:
    _, ts = message.timestamp()
    return SourceRecord(
        topic=cast(str, message.topic()),
        partition=cast(int, message.partition()),
        offset=cast(int, message.offset()),
        key=message.key(),
        value=message.value(),
        headers=cast(Headers, message.headers() or []),
        timestamp_ms=ts if ts > 0 else None,
        fetched_mono=fetched,
        arrived_mono=time.monotonic(),
    )
