from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.partners import Partner
from pipeline.state import BudgetLedger, MemoryStore, Ownership, ReplayGuard, Seen
from tests.fakes import FakeClock

POS = ("claude.requests.acme", 2, 40)


def test_first_sight_then_redelivery_then_replay(wall: FakeClock) -> None:
    guard = ReplayGuard(MemoryStore(), signature_max_age_s=300, wall=wall)
    assert guard.check("acme", "r1", POS, 0).seen is Seen.NEW
    guard.begin("acme", "r1", POS, 0)
    # the same record again: Kafka redelivered it (a crash before the commit)
    assert guard.check("acme", "r1", POS, 0).seen is Seen.REDELIVERED_OPEN
    guard.end("acme", "r1", POS, 0)
    assert guard.check("acme", "r1", POS, 0).seen is Seen.REDELIVERED_DONE
    # the same request_id in another record: a replay
    other = ("claude.requests.acme", 2, 41)
    verdict = guard.check("acme", "r1", other, 0)
    assert verdict.seen is Seen.REPLAY
    assert verdict.first == POS
    # ...unless it is an ops replay with a higher (signed) count
    assert guard.check("acme", "r1", other, 1).seen is Seen.NEW
    # another partner's request_id space is separate
    assert guard.check("globex", "r1", other, 0).seen is Seen.NEW


def test_only_the_done_marker_is_written_durably(wall: FakeClock) -> None:
    store = MemoryStore()
    guard = ReplayGuard(store, signature_max_age_s=300, wall=wall, writer="w1")
    guard.begin("acme", "r1", POS, 0)
    assert "acme|r1" not in store.durable  # this worker's copy only
    assert guard.check("acme", "r1", ("t", 0, 1), 0).seen is Seen.REPLAY  # still guards
    guard.end("acme", "r1", POS, 0)
    assert "acme|r1" in store.durable
    assert store.data["acme|r1"]["w"] == "w1"  # its writer: only it tombstones the entry


def test_entries_live_as_long_as_a_signature_can(wall: FakeClock) -> None:
    store = MemoryStore()
    guard = ReplayGuard(store, signature_max_age_s=300, wall=wall)
    guard.end("acme", "r1", POS, 0)
    wall.advance(guard.window_s - 1)
    assert guard.sweep() == 0
    assert guard.check("acme", "r1", ("t", 0, 1), 0).seen is Seen.REPLAY
    wall.advance(2)
    assert guard.sweep() == 1
    assert store.data == {}


ACME = Partner("acme", "env:X", daily_token_budget=1_000, monthly_budget_usd=1.0)


def test_reservations_hold_the_worst_case_and_settle_to_the_real_cost(wall: FakeClock) -> None:
    ledger = BudgetLedger(MemoryStore(), wall=wall)
    reservations = []
    while (verdict := ledger.check(ACME, 300, 0.01)).state == "go":
        reservations.append(ledger.reserve(ACME, 0, 300, 0.01))
    assert len(reservations) == 3  # 900 of 1,000 tokens reserved
    assert verdict.state == "wait"  # in-flight requests may leave room
    for res in reservations:
        ledger.settle(res, 100, 0.004)
    assert ledger.spent("acme", "tokens", "2026-01-01") == 300
    assert ledger.check(ACME, 300, 0.01).state == "go"


def test_exceeded_when_even_without_reservations_it_would_not_fit(wall: FakeClock) -> None:
    ledger = BudgetLedger(MemoryStore(), wall=wall)
    res = ledger.reserve(ACME, 1, 900, 0.5)
    ledger.settle(res, 900, 0.5)
    verdict = ledger.check(ACME, 200, 0.01)
    assert verdict.state == "exceeded"
    assert "daily token budget of 1,000 reached: 900 tokens spent" in verdict.detail
    # dollars too
    dollars = Partner("d", "env:X", monthly_budget_usd=0.05)
    res = ledger.reserve(dollars, 0, 10, 0.04)
    ledger.settle(res, 10, 0.04)
    assert "monthly budget of $0.05" in ledger.check(dollars, 10, 0.02).detail


def test_a_released_reservation_frees_the_budget(wall: FakeClock) -> None:
    ledger = BudgetLedger(MemoryStore(), wall=wall)
    res = ledger.reserve(ACME, 0, 1_000, 0.1)
    assert ledger.check(ACME, 1, 0.0).state == "wait"
    ledger.release(res)
    assert ledger.check(ACME, 1_000, 0.1).state == "go"


def test_spend_is_a_tally_per_partition_and_writer_shared_by_owned_partitions(
    wall: FakeClock,
) -> None:
    store = MemoryStore()
    half = BudgetLedger(
        store, wall=wall, ownership=lambda pid: Ownership(frozenset({2, 3}), 4), writer="a"
    )
    res = half.reserve(ACME, 3, 400, 0.1)
    half.settle(res, 400, 0.1)
    assert store.data == {
        "acme|tokens|2026-01-01|3|a": {"v": 400.0, "w": "a"},
        "acme|usd|2026-01|3|a": {"v": 0.1, "w": "a"},
    }
    # owning half the partitions: half the daily budget (500), 400 spent
    assert half.check(ACME, 100, 0.01).state == "go"
    assert half.check(ACME, 101, 0.01).state == "exceeded"
    # a worker started later reads what was spent, and writes its own tally
    whole = BudgetLedger(store, wall=wall, writer="b")
    assert whole.check(ACME, 600, 0.01).state == "go"
    assert whole.check(ACME, 601, 0.01).state == "exceeded"
    whole.settle(whole.reserve(ACME, 3, 50, 0.01), 50, 0.01)
    assert store.data["acme|tokens|2026-01-01|3|a"] == {"v": 400.0, "w": "a"}  # untouched
    assert whole.spent_by_partition("acme", "tokens", "2026-01-01") == {3: 450.0}


def test_a_partition_spent_past_its_part_is_a_debt_for_its_next_owners(wall: FakeClock) -> None:
    """Worker b pooled partitions 2 and 3 and spent 500 (all of its half) on 3.
    After a rebalance c owns 3 alone (and can spend nothing more there), and a,
    now owning 0, 1 and 2 (three quarters), must leave room for what 3 overspent:
    without the debt rule a would spend 750 and the partner 1,250 of 1,000."""
    store = MemoryStore()
    owners = {"b": frozenset({2, 3})}

    def ledger(name: str) -> BudgetLedger:
        return BudgetLedger(
            store,
            wall=wall,
            ownership=lambda pid: Ownership(owners.get(name, frozenset()), 4),
            writer=name,
        )

    a, b, c = ledger("a"), ledger("b"), ledger("c")
    b.settle(b.reserve(ACME, 3, 500, 0.0), 500, 0.0)
    assert b.check(ACME, 1, 0.0).state == "exceeded"
    owners.update(a=frozenset({0, 1, 2}), b=frozenset(), c=frozenset({3}))
    assert c.check(ACME, 1, 0.0).state == "exceeded"  # 500 spent of its 250
    assert a.check(ACME, 500, 0.0).state == "go"  # 750 less the debt of 250
    assert a.check(ACME, 501, 0.0).state == "exceeded"
    assert b.check(ACME, 1, 0.0).state == "wait"  # owns none of it now: not refused


def test_a_partition_count_not_known_yet_holds_requests_instead_of_guessing(
    wall: FakeClock,
) -> None:
    # Before: an unknown count fell back to PIPELINE_TOPIC_PARTITIONS (4) while the
    # topic had 5, and two workers together could spend 110% of the budget.
    ledger = BudgetLedger(
        MemoryStore(), wall=wall, ownership=lambda pid: Ownership(frozenset({0, 1}), 0)
    )
    verdict = ledger.check(ACME, 1, 0.0)
    assert verdict.state == "wait"
    assert "partition count" in verdict.detail


@settings(max_examples=300, deadline=None)
@given(
    partitions=st.integers(1, 6),
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("rebalance"), st.lists(st.integers(0, 2), min_size=6, max_size=6)),
            st.tuples(st.just("request"), st.integers(0, 5), st.integers(1, 600)),
        ),
        max_size=60,
    ),
)
def test_no_assignment_history_lets_workers_overrun_a_budget(
    partitions: int, steps: list[tuple[Any, ...]]
) -> None:
    """Three workers, one budget, any sequence of rebalances and requests: every
    request is checked by its partition's owner, and the sum never passes it."""
    wall = FakeClock(1_767_225_600.0)
    store = MemoryStore()
    owner_of = dict.fromkeys(range(partitions), 0)

    def ownership(name: int) -> Callable[[str], Ownership]:
        return lambda pid: Ownership(
            frozenset(p for p, w in owner_of.items() if w == name), partitions
        )

    ledgers = [
        BudgetLedger(store, wall=wall, ownership=ownership(w), writer=str(w)) for w in range(3)
    ]
    for step in steps:
        if step[0] == "rebalance":
            owner_of = {p: step[1][p] for p in range(partitions)}
            continue
        _, p, need = step
        ledger = ledgers[owner_of[p % partitions]]
        if ledger.check(ACME, need, 0.0).state == "go":
            ledger.settle(ledger.reserve(ACME, p % partitions, need, 0.0), need, 0.0)
        assert ledgers[0].spent("acme", "tokens", "2026-01-01") <= 1_000


def test_days_and_months_roll_over_and_old_periods_are_pruned(wall: FakeClock) -> None:
    store = MemoryStore()
    ledger = BudgetLedger(store, wall=wall)
    ledger.settle(ledger.reserve(ACME, 0, 1_000, 1.0), 1_000, 1.0)
    assert ledger.check(ACME, 1, 0.001).state == "exceeded"
    wall.advance(86_400)  # the next day: tokens reset, the month's dollars do not
    verdict = ledger.check(ACME, 1, 0.001)
    assert verdict.state == "exceeded"
    assert "monthly" in verdict.detail
    wall.advance(31 * 86_400)
    assert ledger.check(ACME, 1, 0.001).state == "go"
    assert ledger.prune() == 2
    assert store.data == {}


@pytest.mark.parametrize("budget", [{"daily_token_budget": None, "monthly_budget_usd": None}])
def test_partners_without_budgets_are_never_held(wall: FakeClock, budget: dict[str, None]) -> None:
    ledger = BudgetLedger(MemoryStore(), wall=wall)
    free = Partner("free", "env:X", **budget)  # type: ignore[arg-type]
    assert ledger.check(free, 10**9, 10**6).state == "go"
