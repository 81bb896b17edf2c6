from __future__ import annotations

import pytest

from pipeline.partners import Partner
from pipeline.state import BudgetLedger, MemoryStore, ReplayGuard, Seen
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


def test_only_the_done_marker_is_written_to_a_changelog(wall: FakeClock) -> None:
    store = MemoryStore()
    guard = ReplayGuard(store, signature_max_age_s=300, wall=wall)
    guard.begin("acme", "r1", POS, 0)
    assert "acme|r1" not in store.partitions  # this worker's copy only
    assert guard.check("acme", "r1", ("t", 0, 1), 0).seen is Seen.REPLAY  # still guards
    guard.end("acme", "r1", POS, 0)
    assert store.partitions["acme|r1"] == 2


def test_entries_live_as_long_as_a_signature_can(wall: FakeClock) -> None:
    store = MemoryStore()
    guard = ReplayGuard(store, signature_max_age_s=300, wall=wall)
    guard.end("acme", "r1", POS, 0)
    assert store.partitions["acme|r1"] == 2  # written to its record's partition
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


def test_spend_is_durable_per_partition_and_shared_by_owned_fraction(wall: FakeClock) -> None:
    store = MemoryStore()
    half = BudgetLedger(store, wall=wall, owned_fraction=lambda pid: 0.5)
    res = half.reserve(ACME, 3, 400, 0.1)
    half.settle(res, 400, 0.1)
    assert store.data == {"acme|tokens|2026-01-01|3": 400.0, "acme|usd|2026-01|3": 0.1}
    # owning half the partitions: half the daily budget (500), 400 spent
    assert half.check(ACME, 200, 0.01).state == "exceeded"
    # a new worker recovering the same table sees what was spent
    whole = BudgetLedger(store, wall=wall)
    assert whole.check(ACME, 600, 0.01).state == "go"
    assert whole.check(ACME, 601, 0.01).state == "exceeded"


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
