"""Fair scheduling across partners: weighted deficit round robin on token cost.

Each backlogged partner gets, on its turn, `quantum * weight` tokens of credit
(its deficit) and is served while its head request's estimated cost fits.
Shares of the upstream therefore follow the partners' weights in tokens, not
in request counts: a partner sending huge prompts cannot crowd out one sending
small ones. An idle partner is not in the round at all (its share is lent to
the busy ones), and a partner's backlog never delays another partner by more
than one round. No clock, no I/O: unit tests drive it directly.

Eligibility lets the rate limiter veto a partner for now (its own RPM/TPM is
spent): the round skips it without granting credit, so a throttled partner
cannot bank a burst.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
P = TypeVar("P", bound=Hashable)

# A turn should be about one request: a partner joining the round then waits
# for one request per other partner, not for a long turn of a flooding one.
DEFAULT_QUANTUM = 128


@dataclass
class _Lane(Generic[T]):
    weight: int
    items: deque[tuple[T, int]] = field(default_factory=deque)  # (item, cost)
    deficit: float = 0.0
    granted: bool = False  # has this turn's quantum been added?


class DeficitRoundRobin(Generic[P, T]):
    def __init__(self, quantum: int = DEFAULT_QUANTUM) -> None:
        if quantum < 1:
            raise ValueError("quantum must be >= 1")
        self.quantum = quantum
        self._lanes: dict[P, _Lane[T]] = {}
        self._round: deque[P] = deque()  # backlogged partners, head = whose turn it is
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def depth(self, partner: P) -> int:
        lane = self._lanes.get(partner)
        return len(lane.items) if lane else 0

    def partners(self) -> list[P]:
        return list(self._lanes)

    def set_weight(self, partner: P, weight: int) -> None:
        lane = self._lanes.get(partner)
        if lane is None:
            self._lanes[partner] = _Lane(max(1, weight))
        else:
            lane.weight = max(1, weight)

    def push(self, partner: P, item: T, cost: int, weight: int | None = None) -> None:
        lane = self._lanes.get(partner)
        if lane is None:
            lane = self._lanes[partner] = _Lane(max(1, weight or 1))
        elif weight is not None:
            lane.weight = max(1, weight)
        if not lane.items:
            self._round.append(partner)
        lane.items.append((item, max(1, cost)))
        self._size += 1

    def push_front(self, partner: P, item: T, cost: int) -> None:
        """Re-queue at the head (a retry keeps its place in its partner's line)."""
        lane = self._lanes.get(partner)
        if lane is None:
            lane = self._lanes[partner] = _Lane(1)
        if not lane.items:
            self._round.append(partner)
        lane.items.appendleft((item, max(1, cost)))
        self._size += 1

    def pop(self, eligible: Callable[[P, T], bool] | None = None) -> tuple[P, T] | None:
        """The next (partner, item) to serve, or None if nothing eligible is queued.

        `eligible(partner, head_item)` may veto a partner for now.
        """
        skipped = 0
        while self._round and skipped < len(self._round):
            partner = self._round[0]
            lane = self._lanes[partner]
            if eligible is not None and not eligible(partner, lane.items[0][0]):
                # Throttled: pass the turn on without credit.
                lane.granted = False
                self._round.rotate(-1)
                skipped += 1
                continue
            if not lane.granted:
                lane.deficit += self.quantum * lane.weight
                lane.granted = True
            item, cost = lane.items[0]
            if cost <= lane.deficit:
                lane.items.popleft()
                lane.deficit -= cost
                self._size -= 1
                if not lane.items:
                    # Leaving the round forfeits leftover credit (classic DRR).
                    self._round.popleft()
                    lane.deficit = 0.0
                    lane.granted = False
                return partner, item
            # Not enough credit: the turn ends, credit carries to the next round.
            lane.granted = False
            self._round.rotate(-1)
            skipped = 0
        return None

    def heads(self) -> list[tuple[P, T]]:
        """Each backlogged partner with the item at the head of its lane."""
        return [(p, self._lanes[p].items[0][0]) for p in self._round]

    def refund(self, partner: P, tokens: float) -> None:
        """Correct an estimate once the real cost is known (positive = it cost less)."""
        lane = self._lanes.get(partner)
        if lane is not None and lane.items:
            lane.deficit = max(0.0, lane.deficit + tokens)

    def drain(self, partner: P) -> list[T]:
        """Remove and return everything queued for `partner`."""
        lane = self._lanes.get(partner)
        if lane is None or not lane.items:
            return []
        items = [item for item, _ in lane.items]
        self._size -= len(items)
        lane.items.clear()
        lane.deficit = 0.0
        lane.granted = False
        self._round.remove(partner)
        return items

    def remove_where(self, predicate: Callable[[T], bool]) -> list[T]:
        """Remove queued items matching `predicate` (e.g. of revoked partitions)."""
        removed: list[T] = []
        for partner, lane in self._lanes.items():
            keep = deque((i, c) for i, c in lane.items if not predicate(i))
            if len(keep) != len(lane.items):
                removed.extend(i for i, _ in lane.items if predicate(i))
                had_items = bool(lane.items)
                lane.items = keep
                if had_items and not keep:
                    self._round.remove(partner)
                    lane.deficit = 0.0
                    lane.granted = False
        self._size -= len(removed)
        return removed
