"""The intake's buffer: one lane per partner, taken in turn.

A fetch hands over records in the order the broker returned them, partition by
partition. Taken in that order, a flooding partner's burst stands in front of a
light partner's record: when Faust's single buffer did this, a light partner's
records that arrived behind 452 of the flood's waited 259 ms before our fair
scheduler ever saw them.

`Lanes` holds a FIFO lane per request topic and gives the intake the lanes'
heads in turn. Order within a partition is kept (a topic's records stay in one
lane, in the order they were fetched); across partners nothing promised an
order. The consumer (`pipeline.kafka.consumer`) pauses a topic whose lane fills,
so a flood pauses only the flood, and holds (`hold`) the lane of a partner whose
queue downstream is full: its records wait here, in order, until `release`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any


class Lanes:
    """FIFO lanes, one per `lane_of(item)`, popped in turn."""

    def __init__(self, lane_of: Callable[[Any], str]) -> None:
        self._lane_of = lane_of
        self._lanes: dict[str, deque[Any]] = {}
        self._turns: deque[str] = deque()  # lanes with records, not held, next first
        self._held: set[str] = set()
        self._len = 0

    def append(self, item: Any) -> None:
        name = self._lane_of(item)
        lane = self._lanes.get(name)
        if lane is None:
            lane = self._lanes[name] = deque()
            if name not in self._held:
                self._turns.append(name)
        lane.append(item)
        self._len += 1

    def popleft(self) -> Any:
        if not self._turns:
            raise IndexError("pop from empty lanes")
        name = self._turns.popleft()
        lane = self._lanes[name]
        item = lane.popleft()
        self._len -= 1
        if lane:
            self._turns.append(name)
        else:
            del self._lanes[name]
        return item

    def hold(self, name: str) -> None:
        """Skip this lane's records until `release`."""
        if name in self._held:
            return
        self._held.add(name)
        if name in self._lanes:
            self._turns.remove(name)

    def release(self, name: str) -> None:
        if name not in self._held:
            return
        self._held.discard(name)
        if name in self._lanes:
            self._turns.append(name)

    def ready(self) -> bool:
        """Whether a lane not held has a record."""
        return bool(self._turns)

    def depth(self, name: str) -> int:
        lane = self._lanes.get(name)
        return len(lane) if lane is not None else 0

    def remove(self, drop: Callable[[Any], bool]) -> int:
        """Drop the items `drop` picks; how many went."""
        before = self._len
        for name in list(self._lanes):
            lane = self._lanes[name]
            kept = deque(item for item in lane if not drop(item))
            self._len -= len(lane) - len(kept)
            if kept:
                self._lanes[name] = kept
            else:
                del self._lanes[name]
                if name not in self._held:
                    self._turns.remove(name)
        return before - self._len

    def clear(self) -> None:
        self._lanes.clear()
        self._turns.clear()
        self._held.clear()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0
