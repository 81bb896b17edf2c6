"""The circuit breaker per upstream key, on a fake clock."""

from pipeline.limits.circuit import Circuit, State
from tests.fakes import FakeClock


def test_an_outage_opens_it_and_one_probe_per_doubling_backoff_goes() -> None:
    clock = FakeClock()
    circuit = Circuit(clock, threshold=5, base_s=1.0, cap_s=4.0)
    opened = [circuit.failed() for _ in range(5)]
    assert opened == [False, False, False, False, True]
    assert circuit.state is State.OPEN
    assert circuit.wait() == 1.0
    clock.advance(1.0)
    assert circuit.wait() == 0.0  # half open: the probe goes
    circuit.sent()
    assert circuit.wait() > 0  # nobody else while the probe is out
    assert circuit.failed() is False  # the probe failed: open again, twice as long
    assert circuit.wait() == 2.0
    for expected in (4.0, 4.0):  # capped
        clock.advance(circuit.wait())
        circuit.wait()
        circuit.sent()
        circuit.failed()
        assert circuit.wait() == expected
    clock.advance(4.0)
    circuit.wait()
    circuit.sent()
    assert circuit.succeeded() is True  # the probe came back: closed
    assert circuit.state == State.CLOSED  # type: ignore[comparison-overlap]  # mypy narrowed it
    assert circuit.wait() == 0.0
    assert circuit.backoff_s == 1.0


def test_a_storm_failing_a_quarter_of_calls_is_not_an_outage() -> None:
    circuit = Circuit(FakeClock(), threshold=5, window=20)
    pattern = [True, False, False, False] * 50  # 25% failures, in runs spread out
    opened = [circuit.failed() if failed else circuit.succeeded() for failed in pattern]
    assert not any(opened)
    # but five in a row at the start (nothing else to weigh them against) is one
    fresh = Circuit(FakeClock(), threshold=5, window=20)
    assert [fresh.failed() for _ in range(5)][-1] is True


def test_late_failures_of_requests_sent_before_it_opened_change_nothing() -> None:
    clock = FakeClock()
    circuit = Circuit(clock, threshold=2)
    circuit.failed()
    assert circuit.failed() is True
    until = circuit.wait()
    assert circuit.failed() is False
    assert circuit.wait() == until
