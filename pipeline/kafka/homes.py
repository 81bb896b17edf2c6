"""Whether a misplaced record's partner should be told, or the record is a replay.

A signed record must sit where its key (the signed request_id) puts it
(`Intake._check_placement`). One that does not is either a producer's mistake
(a librdkafka client without `partitioner=murmur2_random`, an explicit
partition, a wrong key), and its partner waits for an answer that would never
come, or a captured record moved elsewhere, whose original has its own outcome.
A replay always comes after its original, so the two are told apart by looking
where the original would be, from `SETTLE_S` after the record was written (one
producer writing two copies at once may land them in either order):

1. The home partitions (one per partition count the topic had) from the group's
   committed offset to their end are read for a record with that key: one there
   is served, in flight or waiting, and will answer the partner.
2. Below the committed offset, every record's outcome was published and its
   "served" marker acknowledged before the offset was committed: after the
   state log is read up to now, the replay guard knows it.

Only with no copy in either place is the partner answered: an error response
naming the partition its key belongs in. Reading further than `SCAN_LIMIT`
records, or a broker that does not answer, leaves the dead letter only (the
answer would be a guess). One decision at a time, off the event loop: a partner
whose producer misplaces everything is paused by its bound, not others.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from pipeline.config import Settings
from pipeline.kafka.clients import reader
from pipeline.state import ReplayGuard

#: The most records a decision reads (summed over the home partitions).
SCAN_LIMIT = 20_000
#: How long after a misplaced record was written its home is first read: one
#: producer writing both copies at once may land them in either order.
SETTLE_S = 1.0

Scan = Callable[[str, list[int], bytes], "bool | None"]


class HomeScan:
    """Reads home partitions between the group's committed offset and their end,
    with a client of its own that never joins the group (like `GroupLag`)."""

    def __init__(self, settings: Settings, limit: int = SCAN_LIMIT, timeout_s: float = 5.0):
        self._settings = settings
        self._consumer: Any = None  # made on first use: most workers never need one
        self._limit = limit
        self._timeout = timeout_s
        self._lock = threading.Lock()

    def holds(self, topic: str, partitions: list[int], key: bytes) -> bool | None:
        """Whether a record keyed `key` is in `partitions` past the group's committed
        offset; None when that cannot be told (too far to read, no answer)."""
        with self._lock:
            if self._consumer is None:  # reads the group's committed offsets
                self._consumer = reader(self._settings, self._settings.group_id)
            try:
                return self._holds(topic, partitions, key)
            finally:
                self._consumer.unassign()

    def _holds(self, topic: str, partitions: list[int], key: bytes) -> bool | None:
        tps = [TopicPartition(topic, p) for p in partitions]
        starts: list[TopicPartition] = []
        for tp in self._consumer.committed(tps, timeout=self._timeout):
            if tp.error is not None:
                return None
            if tp.offset >= 0:
                starts.append(TopicPartition(topic, tp.partition, tp.offset))
            else:  # nothing committed yet: from the start
                low, _ = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, tp.partition), timeout=self._timeout
                )
                starts.append(TopicPartition(topic, tp.partition, low))
        # To the end each partition has when read (end of partition, not the high
        # watermark: the embedded broker reports that short of its last batch).
        self._consumer.assign(starts)
        left = {tp.partition for tp in starts}
        deadline = time.monotonic() + self._timeout
        read = 0
        while left:
            msg = self._consumer.poll(0.2)
            if msg is None:
                if time.monotonic() > deadline:
                    return None
                continue
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    return None
                left.discard(msg.partition() or 0)
                continue
            if msg.key() == key:
                return True
            read += 1
            if read > self._limit:
                return None
        return False

    def close(self) -> None:
        with self._lock:  # after a scan under way
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None


class Homes:
    """Decides whether a misplaced record's partner is answered (see the module)."""

    def __init__(
        self,
        scan: Scan,
        guard: ReplayGuard,
        caught_up: Callable[[], Awaitable[None]],
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._scan = scan
        self._guard = guard
        self._caught_up = caught_up
        self._wall = wall
        self._sleep = sleep
        self._one = asyncio.Lock()

    async def unclaimed(
        self, partner_id: str, request_id: str, topic: str, homes: list[int], written_ms: int
    ) -> bool:
        """True when no copy of the request_id was served, is in flight or waits.
        `written_ms`: the misplaced record's timestamp."""
        if not homes:
            return False  # the topic's partition count is not known: cannot tell
        wait = written_ms / 1000 + SETTLE_S - self._wall()
        if wait > 0:
            await self._sleep(min(wait, SETTLE_S))
        async with self._one:
            key = request_id.encode("utf-8", "surrogatepass")
            # committed offsets first, then the state log: what is below them has
            # its "served" marker in the log before the barrier's markers
            held = await asyncio.to_thread(self._scan, topic, homes, key)
            if held is None or held:
                return False
            await self._caught_up()
            return not self._guard.known(partner_id, request_id)
