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

import math
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
P = TypeVar("P", bound=Hashable)
K = TypeVar("K", bound=Hashable)

# Tokens of credit per turn and unit of weight. Small: a turn should be about
# one request, so a partner joining the round waits for one request per other
# partner, not for a long turn of a flooding one. (Large requests take several
# rounds of credit, granted at once when nobody can be served meanwhile.)
DEFAULT_QUANTUM = 32


@dataclass
class _Lane(Generic[T]):
    weight: int
    items: deque[tuple[T, int]] = field(default_factory=deque)  # (item, cost)
    deficit: float = 0.0
    granted: bool = False  # has this turn's quantum been added?
    listed: bool = False  # in the new list or the round (possibly with nothing queued)


class DeficitRoundRobin(Generic[P, T]):
    """Weighted DRR with a fast lane for partners that just became active.

    As in FQ-CoDel (RFC 8290), a partner whose lane was empty joins the *new*
    list, served before the round of backlogged partners, for one quantum:
    a light partner's occasional request goes out with the next free slot
    instead of waiting a full round behind a flood. A partner that stays
    backlogged moves to the round (the *old* list) and shares by weight.

    Also as in FQ-CoDel (section 4.2), a new partner whose lane empties when it
    is served moves to the end of the round instead of leaving, and leaves
    when its turn there finds its lane still empty. A partner whose requests
    trickle in one by one (a flood arriving through intake) would otherwise
    empty its lane at every request and be new, with the key's headroom for
    newcomers, every time: seen in the fairness benchmark, where the flood's
    first 19 requests took that headroom and the light partners' first
    requests queued 45-93 ms.
    """

    def __init__(
        self, quantum: int = DEFAULT_QUANTUM, price: Callable[[P, T], int] | None = None
    ) -> None:
        """`price(partner, item)`, when given, prices the head of a lane when it is
        considered, overriding the cost it was pushed with: an estimate that keeps
        learning is applied to every partner's waiting requests alike, not frozen
        at whatever it was when each one arrived."""
        if quantum < 1:
            raise ValueError("quantum must be >= 1")
        self.quantum = quantum
        self._price = price
        self._lanes: dict[P, _Lane[T]] = {}
        self._new: deque[P] = deque()  # just became backlogged: served first
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
        if not lane.listed:
            self._new.append(partner)
            lane.listed = True
        lane.items.append((item, max(1, cost)))
        self._size += 1

    def push_front(self, partner: P, item: T, cost: int) -> None:
        """Re-queue at the head (a retry keeps its place in its partner's line)."""
        lane = self._lanes.get(partner)
        if lane is None:
            lane = self._lanes[partner] = _Lane(1)
        if not lane.listed:
            self._new.append(partner)
            lane.listed = True
        lane.items.appendleft((item, max(1, cost)))
        self._size += 1

    def _head(self, partner: P, lane: _Lane[T]) -> tuple[T, int]:
        item, cost = lane.items[0]
        if self._price is not None:
            cost = max(1, self._price(partner, item))
        return item, cost

    def _demote(self, partner: P) -> None:
        """A new partner's first quantum is spent (or it is throttled): join the round."""
        self._new.popleft()
        self._lanes[partner].granted = False
        self._round.append(partner)

    def peek(self, eligible: Callable[[P, T], bool] | None = None) -> tuple[P, T] | None:
        """The (partner, item) DRR would serve next, without removing it.

        `eligible(partner, head_item)` may veto a partner for now: its turn
        passes without credit. It is asked at most once per partner per call
        (nothing changes while we look). Call `take(partner)` to serve the
        peeked item.
        """
        verdicts: dict[P, bool] = {}

        def allowed(partner: P, item: T) -> bool:
            if eligible is None:
                return True
            if partner not in verdicts:
                verdicts[partner] = eligible(partner, item)
            return verdicts[partner]

        while self._new:
            partner = self._new[0]
            lane = self._lanes[partner]
            item, cost = self._head(partner, lane)
            if not allowed(partner, item):
                self._demote(partner)
                continue
            if not lane.granted:
                # enough for its first request whatever its size (RFC 8290
                # assumes a quantum of at least one packet; ours is smaller)
                lane.deficit += max(self.quantum * lane.weight, cost)
                lane.granted = True
            if cost <= lane.deficit:
                return partner, item
            self._demote(partner)  # its credit carries into the round
        skipped = 0  # consecutive turns vetoed
        unserved = 0  # consecutive turns that served nothing
        while self._round and skipped < len(self._round):
            partner = self._round[0]
            lane = self._lanes[partner]
            if not lane.items:  # a new partner served empty: its turn, nothing left
                self._round.popleft()
                lane.listed = False
                continue
            item, cost = self._head(partner, lane)
            if not allowed(partner, item):
                # Throttled: pass the turn on without credit.
                lane.granted = False
                self._round.rotate(-1)
                skipped += 1
                unserved += 1
                continue
            if not lane.granted:
                lane.deficit += self.quantum * lane.weight
                lane.granted = True
            if cost <= lane.deficit:
                return partner, item
            # Not enough credit: the turn ends, credit carries to the next round.
            lane.granted = False
            self._round.rotate(-1)
            skipped = 0
            unserved += 1
            if unserved >= len(self._round):
                self._skip_idle_rounds(verdicts if eligible is not None else None)
                unserved = 0
        return None

    def _skip_idle_rounds(self, verdicts: dict[P, bool] | None) -> None:
        """Grant at once the credit of the rounds in which nobody could be served.

        A 400,000-token request at 32 tokens a turn is 12,500 rounds: granted
        one by one, each asking every partner's gates, that held the event loop
        for seconds. Every eligible lane gets what those rounds would have
        given it, so the next round serves someone, in the order it would have.
        """
        needs: dict[P, int] = {}
        for partner in self._round:
            if verdicts is not None and not verdicts.get(partner, False):
                continue
            lane = self._lanes[partner]
            if not lane.items:
                continue
            short = self._head(partner, lane)[1] - lane.deficit
            needs[partner] = math.ceil(short / (self.quantum * lane.weight))
        rounds = min(needs.values(), default=0) - 1
        if rounds > 0:
            for partner in needs:
                lane = self._lanes[partner]
                lane.deficit += rounds * self.quantum * lane.weight

    def is_new(self, partner: P) -> bool:
        """Is `partner` in the fast lane (it just became active)?"""
        return bool(self._new) and self._new[0] == partner

    def take(self, partner: P) -> T:
        """Serve the head of `partner`'s lane (the item `peek` returned)."""
        lane = self._lanes[partner]
        item, cost = self._head(partner, lane)
        lane.items.popleft()
        lane.deficit -= cost
        self._size -= 1
        if not lane.items:
            if self._new and self._new[0] == partner:
                # To the end of the round, empty, until its turn comes (RFC 8290)
                self._demote(partner)
                lane.deficit = 0.0
            else:
                # Leaving forfeits leftover credit (classic DRR).
                self._leave(partner)
        return item

    def _leave(self, partner: P) -> None:
        lane = self._lanes[partner]
        if partner in self._new:
            self._new.remove(partner)
        elif partner in self._round:
            self._round.remove(partner)
        lane.deficit = 0.0
        lane.granted = False
        lane.listed = False

    def pop(self, eligible: Callable[[P, T], bool] | None = None) -> tuple[P, T] | None:
        """peek + take: the next (partner, item), or None if nothing eligible is queued."""
        picked = self.peek(eligible)
        if picked is None:
            return None
        return picked[0], self.take(picked[0])

    def heads(self) -> list[tuple[P, T]]:
        """Each backlogged partner with the item at the head of its lane."""
        return [
            (p, self._lanes[p].items[0][0])
            for p in (*self._new, *self._round)
            if self._lanes[p].items
        ]

    def drain(self, partner: P) -> list[T]:
        """Remove and return everything queued for `partner`."""
        lane = self._lanes.get(partner)
        if lane is None or not lane.items:
            return []
        items = [item for item, _ in lane.items]
        self._size -= len(items)
        lane.items.clear()
        self._leave(partner)
        return items

    def remove_where(self, predicate: Callable[[T], bool]) -> list[T]:
        """Remove queued items matching `predicate` (e.g. of revoked partitions)."""
        removed: list[T] = []
        for partner, lane in self._lanes.items():
            if not lane.items:
                continue
            keep = deque((i, c) for i, c in lane.items if not predicate(i))
            if len(keep) != len(lane.items):
                removed.extend(i for i, _ in lane.items if predicate(i))
                lane.items = keep
                if not keep:
                    self._leave(partner)
        self._size -= len(removed)
        return removed


class KeyedFairQueue(Generic[K, P, T]):
    """Partners grouped by the upstream key they spend: DRR among the partners of
    a key, round robin across keys.

    A key out of capacity blocks only its own partners, and blocks them without
    reordering their round: the partner whose turn it is keeps it until the key
    can take its request, so a flood cannot take every token that frees up and
    a large request is not overtaken forever by small ones.
    """

    def __init__(
        self, quantum: int = DEFAULT_QUANTUM, price: Callable[[P, T], int] | None = None
    ) -> None:
        self.quantum = quantum
        self._price = price
        self._drr: dict[K, DeficitRoundRobin[P, T]] = {}
        self._keys: deque[K] = deque()  # keys with a backlog
        self._key_of: dict[P, K] = {}

    def __len__(self) -> int:
        return sum(len(d) for d in self._drr.values())

    def depth(self, partner: P) -> int:
        key = self._key_of.get(partner)
        return 0 if key is None else self._drr[key].depth(partner)

    def push(
        self,
        key: K,
        partner: P,
        item: T,
        cost: int,
        weight: int | None = None,
        front: bool = False,
    ) -> None:
        old = self._key_of.get(partner)
        if old is not None and old != key:
            # The partner changed keys: its queued work follows it.
            moved = self._drr[old].drain(partner)
            self._forget_if_idle(old)
            self._key_of[partner] = key
            for queued in moved:
                self.push(key, partner, queued, cost, weight)
        self._key_of[partner] = key
        drr = self._drr.get(key)
        if drr is None:
            drr = self._drr[key] = DeficitRoundRobin(self.quantum, self._price)
        if not len(drr):
            self._keys.append(key)
        if front:
            drr.push_front(partner, item, cost)
        else:
            drr.push(partner, item, cost, weight)

    def _forget_if_idle(self, key: K) -> None:
        if key in self._drr and not len(self._drr[key]) and key in self._keys:
            self._keys.remove(key)

    def pop(
        self,
        partner_ok: Callable[[P, T], bool],
        key_ok: Callable[[K, T, bool], bool],
    ) -> tuple[P, T] | None:
        """The next request to send. `key_ok(key, item, new)` says whether the
        key can take it now; `new` is true for a partner that just became
        active (the key may keep a little headroom for those)."""
        for _ in range(len(self._keys)):
            key = self._keys[0]
            drr = self._drr[key]
            picked = drr.peek(partner_ok)
            if picked is not None and key_ok(key, picked[1], drr.is_new(picked[0])):
                item = drr.take(picked[0])
                self._keys.rotate(-1)
                self._forget_if_idle(key)
                return picked[0], item
            self._keys.rotate(-1)
        return None

    def heads(self) -> list[tuple[K, P, T]]:
        return [(k, p, item) for k in self._keys for p, item in self._drr[k].heads()]

    def remove_where(self, predicate: Callable[[T], bool]) -> list[T]:
        removed: list[T] = []
        for key, drr in self._drr.items():
            removed.extend(drr.remove_where(predicate))
            if not len(drr) and key in self._keys:
                self._keys.remove(key)
        return removed


class OutputEstimate:
    """A request's cost for fair sharing: its input plus the output its partner's
    requests really produce (learned from their usage), not the worst case.

    Partners that ask for max_tokens 4,096 and use 200 are not charged a share for
    the 3,896 they never use. A partner with no answers yet is taken to be like
    the others so far: were it charged the worst case while the partners served
    first were already charged what they use, a light partner would pay up to
    max_tokens / output times more per request until its first answers came back.
    """

    def __init__(self, smoothing: float = 0.2) -> None:
        self._smoothing = smoothing
        self._ratio: dict[str, float] = {}
        self._overall = 1.0  # every partner's answers: the prior for one not seen yet

    def ratio(self, partner_id: str) -> float:
        """The share of max_tokens this partner's requests are expected to use."""
        return self._ratio.get(partner_id, self._overall)

    def cost(self, partner_id: str, admitted: HasCost) -> int:
        ratio = self.ratio(partner_id)
        return admitted.est_input_tokens + max(1, math.ceil(admitted.max_tokens * ratio))

    def learn(self, partner_id: str, max_tokens: int, result: HasOutput) -> None:
        observed = min(1.0, result.output_tokens / max(1, max_tokens))
        previous = self.ratio(partner_id)
        self._ratio[partner_id] = self._ema(previous, observed)
        self._overall = self._ema(self._overall, observed)

    def _ema(self, previous: float, observed: float) -> float:
        return (1 - self._smoothing) * previous + self._smoothing * observed


class HasCost(Protocol):
    @property
    def est_input_tokens(self) -> int: ...

    @property
    def max_tokens(self) -> int: ...


class HasOutput(Protocol):
    @property
    def output_tokens(self) -> int: ...
