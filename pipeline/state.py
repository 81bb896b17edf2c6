"""State a worker must not lose: request_ids it has served, and what partners spent.

Both live in the state log (`pipeline.kafka.statelog`), which every worker follows in
full, so they survive restarts and are the same whoever owns which partition.
The logic here is plain Python over a small `Store` interface: unit tests drive
it with a dict and a fake clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum, StrEnum
from typing import Any, Protocol

from pipeline.partners import Partner
from pipeline.security.signing import MAX_CLOCK_SKEW_S

Position = tuple[str, int, int]  # topic, partition, offset
Listener = Callable[[str, Any], None]  # (key, value or None when deleted)


class Store(Protocol):
    """A durable key-value table (values are JSON-compatible)."""

    def get(self, key: str) -> Any: ...

    def put(self, key: str, value: Any) -> Awaitable[Any] | None:
        """Write; the awaitable (if any) completes when the write is durable."""

    def put_local(self, key: str, value: Any) -> None:
        """Write this worker's copy only (lost with the process, not recovered)."""

    def delete(self, key: str) -> None: ...

    def items(self) -> Iterable[tuple[str, Any]]: ...

    def watch(self, listener: Listener) -> None:
        """Call `listener` on every change, whoever made it."""


class MemoryStore:
    """A Store in a dict (tests, and a worker without a state log)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.durable: set[str] = set()  # keys whose last write was a durable one
        self._listeners: list[Listener] = []

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def _changed(self, key: str, value: Any) -> None:
        for listener in self._listeners:
            listener(key, value)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.durable.add(key)
        self._changed(key, value)

    def put_local(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.durable.discard(key)
        self._changed(key, value)

    def delete(self, key: str) -> None:
        if self.data.pop(key, None) is not None:
            self.durable.discard(key)
            self._changed(key, None)

    def remove(self, key: str) -> None:
        self.delete(key)

    def items(self) -> Iterable[tuple[str, Any]]:
        return list(self.data.items())

    def watch(self, listener: Listener) -> None:
        self._listeners.append(listener)


# -- replay protection -------------------------------------------------------------


class Seen(Enum):
    NEW = "new"  # never seen (or long enough ago that its signature is stale)
    REDELIVERED_DONE = "redelivered_done"  # Kafka gave us the same record again; served
    REDELIVERED_OPEN = "redelivered_open"  # the same record, but its work never finished
    REPLAY = "replay"  # the same request_id in another record: refused


@dataclass(frozen=True)
class GuardVerdict:
    seen: Seen
    first: Position | None = None


class ReplayGuard:
    """Remembers each (partner, request_id) for as long as its signature is valid.

    A record carrying a request_id already seen from that partner is a replay,
    unless it is the very same record (same topic, partition, offset): then
    Kafka redelivered it, after a crash or a rebalance, and it is neither
    refused nor sent to Claude again if its outcome was already published.
    An ops replay of a dead letter carries a higher (signed) replay count.
    """

    def __init__(
        self,
        store: Store,
        signature_max_age_s: float,
        wall: Callable[[], float] = time.time,
        writer: str = "",
    ) -> None:
        self._store = store
        self.window_s = signature_max_age_s + MAX_CLOCK_SKEW_S + 60.0
        self._wall = wall
        self._writer = writer

    @staticmethod
    def _key(partner_id: str, request_id: str) -> str:
        return f"{partner_id}|{request_id}"

    def check(
        self, partner_id: str, request_id: str, position: Position, replay_count: int
    ) -> GuardVerdict:
        entry = self._store.get(self._key(partner_id, request_id))
        if not isinstance(entry, dict):
            return GuardVerdict(Seen.NEW)
        first: Position = (str(entry["t"]), int(entry["p"]), int(entry["o"]))
        if self._wall() * 1000 - int(entry["at"]) > self.window_s * 1000:
            return GuardVerdict(Seen.NEW)
        if first == position:
            done = entry.get("s") == "done"
            return GuardVerdict(Seen.REDELIVERED_DONE if done else Seen.REDELIVERED_OPEN, first)
        if replay_count > int(entry.get("r", 0)):
            return GuardVerdict(Seen.NEW, first)  # an ops replay
        return GuardVerdict(Seen.REPLAY, first)

    def known(self, partner_id: str, request_id: str) -> bool:
        """Whether a copy of this request_id was served (by any worker: done markers
        are in the state log) or is in flight here, within the signature window."""
        entry = self._store.get(self._key(partner_id, request_id))
        if not isinstance(entry, dict):
            return False
        return self._wall() * 1000 - int(entry["at"]) <= self.window_s * 1000

    def done(self, partner_id: str, request_id: str) -> bool:
        """Whether a copy of this request_id was answered (its done marker is read)."""
        entry = self._store.get(self._key(partner_id, request_id))
        return isinstance(entry, dict) and entry.get("s") == "done"

    def _entry(self, position: Position, replay_count: int, state: str) -> dict[str, Any]:
        topic, partition, offset = position
        return {
            "t": topic,
            "p": partition,
            "o": offset,
            "r": replay_count,
            "s": state,
            "at": int(self._wall() * 1000),
            "w": self._writer,
        }

    def begin(
        self, partner_id: str, request_id: str, position: Position, replay_count: int
    ) -> None:
        """Mark a request in flight, in this worker only.

        Nothing else needs it: after a crash its record is redelivered and served
        again, which is what a recovered "open" entry would have asked for too.
        (One state write per request instead of two.)
        """
        entry = self._entry(position, replay_count, "open")
        self._store.put_local(self._key(partner_id, request_id), entry)

    def end(
        self, partner_id: str, request_id: str, position: Position, replay_count: int
    ) -> Awaitable[Any] | None:
        """Mark a request done, durably: a redelivery after a crash is not served again."""
        entry = self._entry(position, replay_count, "done")
        return self._store.put(self._key(partner_id, request_id), entry)

    def sweep(self) -> int:
        """Forget entries whose signatures can no longer pass (their records would be stale)."""
        horizon = (self._wall() - self.window_s) * 1000
        expired = [
            (k, v) for k, v in self._store.items() if isinstance(v, dict) and v["at"] < horizon
        ]
        for key, _value in expired:
            self._store.delete(key)
        return len(expired)


# -- budgets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    kind: str  # "tokens" (per UTC day) or "usd" (per UTC month)
    period: str
    limit: float


@dataclass
class Reservation:
    partner_id: str
    partition: int
    tokens: float
    usd: float
    day: str
    month: str


class BudgetState(StrEnum):
    GO = "go"
    WAIT = "wait"  # requests in flight may still fit it
    EXCEEDED = "exceeded"


@dataclass(frozen=True)
class BudgetVerdict:
    state: BudgetState
    detail: str = ""


BUDGET_GO = BudgetVerdict(BudgetState.GO)


def periods(now: float) -> tuple[str, str]:
    dt = datetime.fromtimestamp(now, tz=UTC)
    return dt.strftime("%Y-%m-%d"), dt.strftime("%Y-%m")


@dataclass(frozen=True)
class Ownership:
    """The partitions of a partner's request topic this worker owns, of how many."""

    owned: frozenset[int]
    total: int

    @property
    def fraction(self) -> float:
        """The part of the partner's traffic these partitions carry (its keys are
        random request_ids, spread evenly); 1.0 while the total is not known."""
        return len(self.owned) / self.total if self.total else 1.0


class BudgetLedger:
    """Daily token and monthly dollar budgets that cannot be overrun.

    Admission reserves the worst case (every input token, all of max_tokens,
    at the model's price) and settles to the real usage afterwards, so
    hundreds of requests in flight can never spend past a budget. What was
    spent is durable: a tally per partner, period, request partition and writer
    (each worker incarnation writes only its own tallies, so no write can undo
    another's: a grow-only counter). What is reserved lives only as long as its
    request.

    Workers never ask each other. A worker owning k of a partner's P partitions
    may spend k/P of each budget, counting what was spent on those partitions
    by anyone; and since partitions move between workers with what was spent
    on them, any partition that went over its own 1/P (spent while pooled with
    others) is a debt every other owner subtracts. With those two rules the
    sum over all partitions stays within the budget whatever the assignment,
    the number of workers, or the history of rebalances.
    """

    def __init__(
        self,
        store: Store,
        wall: Callable[[], float] = time.time,
        ownership: Callable[[str], Ownership | None] = lambda partner_id: None,
        writer: str = "",
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self._store = store
        self._ready = ready
        self._wall = wall
        self._ownership = ownership
        self._writer = writer
        self._reserved: dict[tuple[str, str, str], float] = {}
        # (partner, kind, period) -> partition -> writer -> spent
        self._tallies: dict[tuple[str, str, str], dict[int, dict[str, float]]] = {}
        for key, value in store.items():
            self._index(key, value)
        store.watch(self._index)

    @staticmethod
    def _key(partner_id: str, kind: str, period: str, partition: int, writer: str) -> str:
        return f"{partner_id}|{kind}|{period}|{partition}|{writer}"

    def _index(self, key: str, value: Any) -> None:
        try:
            partner_id, kind, period, partition, writer = key.rsplit("|", 4)
            part = int(partition)
            amount = None if value is None else float(value["v"])
        except (ValueError, KeyError, TypeError):
            return  # not a tally
        by_partition = self._tallies.setdefault((partner_id, kind, period), {})
        writers = by_partition.setdefault(part, {})
        if amount is None:
            writers.pop(writer, None)
        else:
            writers[writer] = amount

    def budgets(self, partner: Partner) -> list[Budget]:
        day, month = periods(self._wall())
        out = []
        if partner.daily_token_budget is not None:
            out.append(Budget("tokens", day, float(partner.daily_token_budget)))
        if partner.monthly_budget_usd is not None:
            out.append(Budget("usd", month, float(partner.monthly_budget_usd)))
        return out

    def spent_by_partition(self, partner_id: str, kind: str, period: str) -> dict[int, float]:
        by_partition = self._tallies.get((partner_id, kind, period), {})
        return {p: sum(writers.values()) for p, writers in by_partition.items()}

    def spent(self, partner_id: str, kind: str, period: str) -> float:
        """Spent on all partitions, as far as this worker has read."""
        return sum(self.spent_by_partition(partner_id, kind, period).values())

    def _room(self, partner_id: str, budget: Budget) -> tuple[float, float]:
        """(what counts as spent here, what this worker may spend in all)."""
        by_partition = self.spent_by_partition(partner_id, budget.kind, budget.period)
        own = self._ownership(partner_id)
        if own is None:  # one worker owns everything
            return sum(by_partition.values()), budget.limit
        fair = budget.limit / max(1, own.total)
        mine = sum(v for p, v in by_partition.items() if p in own.owned)
        debt = sum(max(0.0, v - fair) for p, v in by_partition.items() if p not in own.owned)
        return mine + debt, fair * len(own.owned)

    def check(self, partner: Partner, tokens: float, usd: float) -> BudgetVerdict:
        own = self._ownership(partner.partner_id)
        for budget in self.budgets(partner):
            if not self._ready():
                return BudgetVerdict(BudgetState.WAIT, "reading what was spent")
            if own is not None and not own.owned:
                # Its partitions are moving: the next owner decides.
                return BudgetVerdict(BudgetState.WAIT, "its partition is being reassigned")
            if own is not None and own.total < len(own.owned):
                return BudgetVerdict(BudgetState.WAIT, "its topic's partition count is not known")
            need = tokens if budget.kind == "tokens" else usd
            counted, allowed = self._room(partner.partner_id, budget)
            # a hair of tolerance: sums of float dollars must not refuse the last cent
            limit = allowed * (1 + 1e-9)
            reserved = self._reserved.get((partner.partner_id, budget.kind, budget.period), 0.0)
            if counted + need > limit:
                total = self.spent(partner.partner_id, budget.kind, budget.period)
                what = (
                    f"daily token budget of {budget.limit:,.0f}"
                    if budget.kind == "tokens"
                    else f"monthly budget of ${budget.limit:,.2f}"
                )
                used = f"{total:,.0f} tokens" if budget.kind == "tokens" else f"${total:,.4f}"
                return BudgetVerdict(
                    BudgetState.EXCEEDED,
                    f"{what} reached: {used} spent, this request may need "
                    + (f"{need:,.0f} tokens" if budget.kind == "tokens" else f"${need:,.4f}"),
                )
            if counted + reserved + need > limit:
                return BudgetVerdict(BudgetState.WAIT, "requests in flight may still fit it")
        return BUDGET_GO

    def reserve(self, partner: Partner, partition: int, tokens: float, usd: float) -> Reservation:
        day, month = periods(self._wall())
        for budget in self.budgets(partner):
            key = (partner.partner_id, budget.kind, budget.period)
            self._reserved[key] = self._reserved.get(key, 0.0) + (
                tokens if budget.kind == "tokens" else usd
            )
        return Reservation(partner.partner_id, partition, tokens, usd, day, month)

    def _unreserve(self, res: Reservation) -> None:
        for kind, period, amount in (
            ("tokens", res.day, res.tokens),
            ("usd", res.month, res.usd),
        ):
            key = (res.partner_id, kind, period)
            if key in self._reserved:
                left = self._reserved[key] - amount
                if left > 1e-9:
                    self._reserved[key] = left
                else:
                    del self._reserved[key]

    def release(self, res: Reservation) -> None:
        """The request never spent anything (refused before or by Claude)."""
        self._unreserve(res)

    def settle(self, res: Reservation, tokens: float, usd: float) -> list[Awaitable[Any]]:
        """Record what the request really spent; returns the durable writes."""
        self._unreserve(res)
        writes: list[Awaitable[Any]] = []
        for kind, period, amount in (("tokens", res.day, tokens), ("usd", res.month, usd)):
            if amount <= 0:
                continue
            key = self._key(res.partner_id, kind, period, res.partition, self._writer)
            current = self._tallies.get((res.partner_id, kind, period), {})
            mine = current.get(res.partition, {}).get(self._writer, 0.0)
            write = self._store.put(key, {"v": mine + amount, "w": self._writer})
            if write is not None:
                writes.append(write)
        return writes

    def prune(self, keep_days: int = 2) -> int:
        """Drop tallies of periods that are over (a day after, to be safe)."""
        _, month = periods(self._wall())
        oldest_day, _ = periods(self._wall() - 86_400 * (keep_days - 1))
        stale = []
        for key, _value in self._store.items():
            try:
                _partner, kind, period, _partition, _writer = key.rsplit("|", 4)
            except ValueError:
                continue
            if (kind == "tokens" and period < oldest_day) or (kind == "usd" and period < month):
                stale.append(key)
        for key in stale:
            self._store.delete(key)
        return len(stale)


async def wait_all(writes: Iterable[Awaitable[Any] | None]) -> None:
    """Wait for durable writes (None entries are writes that need no waiting)."""
    pending = [w for w in writes if w is not None]
    if pending:
        await asyncio.gather(*pending)
