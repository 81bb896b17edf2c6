"""Fetch lanes: a partner that sends huge records is fetched on a connection of its own.

A Kafka consumer sends each broker one fetch at a time, for all of its
partitions there, and reads the response whole before it hands on any record in
it. A record batch larger than the per-partition fetch limit still comes whole
(the broker returns the first batch of a partition whatever its size, KIP-74),
so a good partner's small records that share a response with another partner's
10 MB batch wait for all of it to cross, and the next fetch waits for that one:
in the poison benchmark the good traffic's p99 went from 74 to 136 ms, all of it
before the event loop.

`HeavyTopics` remembers the topics (partners) whose fetches carried a batch over
the limit, for `hold_s` after the last one; `faustadapter.fetch_heavy_apart`
sends their partitions in a fetch of their own, on a connection of their own, so
only the heavy partner waits for its heavy batches. A topic's first heavy batch
still shares a fetch: nothing says it is coming.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

log = logging.getLogger("pipeline.kafka.fetchlanes")

#: Lanes: every topic's partitions share lane SHARED unless the topic is heavy.
SHARED, HEAVY = 0, 1

_P = TypeVar("_P")


class HeavyTopics:
    """Topics whose fetched batches went over `limit_bytes`, each held heavy for
    `hold_s` after its last such batch (`clock` is injected in tests)."""

    def __init__(
        self, limit_bytes: int, hold_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit_bytes = limit_bytes
        self.hold_s = hold_s
        self._clock = clock
        self._until: dict[str, float] = {}

    def lane(self, topic: str) -> int:
        until = self._until.get(topic)
        if until is None:
            return SHARED
        if self._clock() < until:
            return HEAVY
        del self._until[topic]
        log.info("fetched with the others again", extra={"topic": topic})
        return SHARED

    def any(self) -> bool:
        """Whether any topic is heavy now."""
        return any(self.lane(topic) == HEAVY for topic in list(self._until))

    def saw(self, topic: str, nbytes: int) -> None:
        """A fetch response carried `nbytes` of records for one partition of `topic`."""
        if nbytes <= self.limit_bytes:
            return
        if self.lane(topic) == SHARED:
            log.info(
                "fetched apart: a record batch over the fetch limit",
                extra={"topic": topic, "bytes": nbytes, "limit_bytes": self.limit_bytes},
            )
        self._until[topic] = self._clock() + self.hold_s

    def saw_response(self, topics: Iterable[tuple[str, Iterable[Any]]]) -> None:
        """A fetch response's topics, as aiokafka decodes them: (topic, partitions),
        each partition a tuple whose last field is its records (bytes or None)."""
        for topic, partitions in topics:
            for partition in partitions:
                records = partition[-1]
                if records:
                    self.saw(topic, len(records))

    def split(self, topics: list[tuple[str, _P]]) -> dict[int, list[tuple[str, _P]]]:
        """A fetch request's (topic, partitions) by lane, in their order."""
        lanes: dict[int, list[tuple[str, _P]]] = {}
        for entry in topics:
            lanes.setdefault(self.lane(entry[0]), []).append(entry)
        return lanes
