"""The request agent's buffer: one lane per partner, taken in turn.

Faust hands records to an agent through one buffer per channel, in arrival
order, and its stream takes one record every three event-loop turns (about
0.28 ms each in the fairness benchmark). A flooding partner's burst filled it:
a light partner's records that arrived behind 452 of the flood's waited 259 ms
before our fair scheduler ever saw them.

`FairBuffer` is that buffer with the same interface (it is a mode
`ThrowableQueue`), holding a FIFO lane per request topic and giving the stream
the lanes' heads in turn. Order within a partition is kept (a topic's records
stay in one lane, in the order Faust delivers them); across partners nothing
promised an order. Back-pressure is per lane too: Faust stops fetching a
partition when the buffer is under pressure, and here that is when the
partition's own lane is, so a flood pauses only the flood.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from mode.utils.queues import ThrowableQueue

#: The whole buffer holds this many lanes' worth. A full buffer blocks Faust's
#: fetch loop for every partner, so it must not fill while one lane does: a
#: lane's own mark stops its partitions' fetching long before.
LANES_SHARED = 8


def _lane_of(item: Any) -> str:
    message = getattr(item, "message", None)
    return str(getattr(message, "topic", ""))


class Lanes:
    """FIFO lanes by topic, popped in turn: the deque-like store behind
    `FairBuffer` (what `asyncio.Queue` keeps in `_queue`)."""

    def __init__(self) -> None:
        self._lanes: dict[str, deque[Any]] = {}
        self._turns: deque[str] = deque()  # lanes with records, next first
        self._len = 0

    def append(self, item: Any) -> None:
        name = _lane_of(item)
        lane = self._lanes.get(name)
        if lane is None:
            lane = self._lanes[name] = deque()
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

    def depth(self, name: str) -> int:
        lane = self._lanes.get(name)
        return len(lane) if lane is not None else 0

    def clear(self) -> None:
        self._lanes.clear()
        self._turns.clear()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[Any]:
        for name in self._turns:
            yield from self._lanes[name]


class FairBuffer(ThrowableQueue[Any]):
    """mode's `ThrowableQueue` over `Lanes`, with back-pressure per lane."""

    _queue: Lanes

    def __init__(self, *args: Any, lane_max: int, **kwargs: Any) -> None:
        # The lanes whose pressure callbacks wait for the lane to drain.
        self._pressed: dict[str, set[Callable[[], None]]] = {}
        # Marks as mode's for a whole queue (1/1.25 and 0.4 of its size), per lane.
        self.lane_high = max(1, math.floor(lane_max / self.pressure_high_ratio))
        self.lane_drop = math.floor(lane_max * self.pressure_drop_ratio)
        super().__init__(*args, **kwargs)

    def _init(self, maxsize: int) -> None:  # asyncio.Queue's hook for its store
        self._queue = Lanes()

    def depth(self, lane: str) -> int:
        return self._queue.depth(lane)

    def put_nowait_enhanced(
        self,
        value: Any,
        *,
        on_pressure_high: Callable[[], None],
        on_pressure_drop: Callable[[], None],
    ) -> bool:
        """As mode's, with the pressure of the record's own lane: a partition is
        paused when its partner's lane is nearly full, not when the buffer is."""
        name = _lane_of(value)
        pressed = self._pressed.get(name, ())
        high = False
        if on_pressure_drop not in pressed and self._queue.depth(name) >= self.lane_high:
            self._pressed.setdefault(name, set()).add(on_pressure_drop)
            on_pressure_high()
            high = True
        self.force_put_nowait(value)
        return high

    def maybe_endorse_pressure_drop(self) -> None:
        """Resume the partitions of every lane drained to the drop size."""
        if not self._pressed:
            return
        for name in list(self._pressed):
            if self._queue.depth(name) <= self.lane_drop:
                pressed = self._pressed.pop(name)
                for callback in pressed:
                    callback()
                self.on_pressure_drop()
