from collections import Counter

from pipeline.dev.sim.faults import FaultInjector


def test_same_seed_same_sequence() -> None:
    rates = {"500": 0.1, "529": 0.1, "429": 0.05, "timeout": 0.02, "reset": 0.03}
    a = FaultInjector(rates, seed=7)
    b = FaultInjector(rates, seed=7)
    seq_a = [a.draw() for _ in range(500)]
    assert seq_a == [b.draw() for _ in range(500)]
    other = FaultInjector(rates, seed=8)
    assert seq_a != [other.draw() for _ in range(500)]


def test_rates_are_respected_in_aggregate() -> None:
    inj = FaultInjector({"529": 0.2, "reset": 0.1}, seed=1)
    counts = Counter(inj.draw() for _ in range(20_000))
    assert abs(counts["529"] / 20_000 - 0.2) < 0.015
    assert abs(counts["reset"] / 20_000 - 0.1) < 0.015
    assert set(counts) == {"529", "reset", None}


def test_no_rates_never_faults() -> None:
    inj = FaultInjector({}, seed=None)
    assert all(inj.draw() is None for _ in range(100))
