"""Where a keyed record belongs: Kafka's default partitioner, murmur2.

The Java client (and librdkafka with `partitioner=murmur2_random`, which our
producers set) puts a record with key k in partition
`(murmur2(k) & 0x7fffffff) % partitions`. The worker checks that a request
record sits where its key (its request_id) puts it, so that every copy of a
request_id lands in one partition, is read by one worker, and the replay guard
sees all of them in order: a captured record re-produced into another
partition cannot be served twice by two workers at once.
"""

from __future__ import annotations

from collections.abc import Callable

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (as `org.apache.kafka.common.utils.Utils.murmur2`), signed 32-bit."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    full = length - length % 4
    for i in range(0, full, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[full + 2] << 16
    if rest >= 2:
        h ^= data[full + 1] << 8
    if rest >= 1:
        h ^= data[full]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives `key`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class PartitionCounts:
    """Each request topic's partition count now, and every count it had while
    this process ran: after partitions are added (CreatePartitions), a producer
    with an older view still places keys where the older count said, for up to
    its metadata max age, and those records are placed right too."""

    def __init__(self, lookup: Callable[[str], int | None]) -> None:
        self._lookup = lookup  # the consumer's metadata
        self._current: dict[str, int] = {}
        self._seen: dict[str, list[int]] = {}

    def current(self, topic: str) -> int | None:
        total = self._current.get(topic)
        if total is None:
            total = self._lookup(topic)
            if total:
                self._current[topic] = total
                seen = self._seen.setdefault(topic, [])
                if total not in seen:
                    seen.insert(0, total)
        return total

    def every(self, topic: str) -> list[int]:
        """The count now, then the earlier ones (empty while it is not known)."""
        return self._seen.get(topic, []) if self.current(topic) is not None else []

    def refresh(self) -> None:
        """Read the counts again (a rebalance follows a change of partitions)."""
        self._current = {}
