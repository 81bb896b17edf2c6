"""Which offset of each request partition may be committed: the lowest one whose
record is not done yet.

A worker serves a partition's records out of order (a light request overtakes a
heavy one, a retry waits out its backoff), so "the last record delivered" is
not a safe commit: the committed offset is the next record the group reads
after a crash or a rebalance, and every record below it must have its outcome
on the broker. `Offsets` keeps, per partition, the records handed over and not
yet acked, and commits up to the oldest of them (all delivered ones acked: one
past the newest).

Pure: the consumer (`pipeline.kafka.consumer`) calls it from the event loop
only, and commits what `commits()` returns.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

TP = tuple[str, int]


class _Partition:
    __slots__ = ("committed", "heap", "next", "pending")

    def __init__(self) -> None:
        self.pending: set[int] = set()  # delivered, not acked
        self.heap: list[int] = []  # the same, lowest first (acked ones lazily removed)
        self.next: int | None = None  # one past the newest offset delivered
        self.committed: int | None = None  # what was last handed out to commit

    def compact(self) -> None:
        """Acked offsets leave the heap only at its top: while the oldest record
        is long in flight (a retry's back-off), the heap is rebuilt from what is
        pending before it holds many times more."""
        if len(self.heap) > 2 * len(self.pending) + 64:
            self.heap = sorted(self.pending)  # a sorted list is a heap

    def position(self) -> int | None:
        while self.heap and self.heap[0] not in self.pending:
            heapq.heappop(self.heap)
        return self.heap[0] if self.heap else self.next


class Offsets:
    """Delivered and acked offsets of the partitions a consumer owns."""

    def __init__(self) -> None:
        self._parts: dict[TP, _Partition] = {}

    def assigned(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._parts.setdefault(tp, _Partition())

    def revoked(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._parts.pop(tp, None)

    def owns(self, tp: TP) -> bool:
        return tp in self._parts

    def delivered(self, tp: TP, offset: int) -> bool:
        """A record handed to the worker; False if its partition is not owned."""
        part = self._parts.get(tp)
        if part is None:
            return False
        if offset not in part.pending:
            part.pending.add(offset)
            heapq.heappush(part.heap, offset)
        if part.next is None or offset >= part.next:
            part.next = offset + 1
        return True

    def acked(self, tp: TP, offset: int) -> None:
        """A record's work is done (outcome on the broker, or nothing to do)."""
        part = self._parts.get(tp)
        if part is not None:
            part.pending.discard(offset)
            part.compact()

    def in_flight(self, tp: TP) -> int:
        part = self._parts.get(tp)
        return 0 if part is None else len(part.pending)

    def position(self, tp: TP) -> int | None:
        """The offset to commit for `tp` now (None: nothing delivered yet)."""
        part = self._parts.get(tp)
        return None if part is None else part.position()

    def commits(self, tps: Iterable[TP] | None = None) -> dict[TP, int]:
        """Positions that moved since they were last returned (of `tps`, or of all)."""
        out: dict[TP, int] = {}
        for tp in self._parts if tps is None else tps:
            part = self._parts.get(tp)
            if part is None:
                continue
            position = part.position()
            if position is not None and position != part.committed:
                part.committed = position
                out[tp] = position
        return out

    def positions(self, tps: Iterable[TP]) -> dict[TP, int]:
        """Every position of `tps` known now, moved or not (what a partition that
        leaves commits, whatever asynchronous commits may still be in the air)."""
        out = {}
        for tp in tps:
            position = self.position(tp)
            if position is not None:
                out[tp] = position
        return out

    def uncommit(self, positions: dict[TP, int]) -> None:
        """A commit of these positions failed: hand them out again next time."""
        for tp in positions:
            part = self._parts.get(tp)
            if part is not None:
                part.committed = None
