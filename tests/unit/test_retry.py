import pytest

from pipeline.limits.retry import RetryPolicy


def test_full_jitter_bounds_grow_then_cap() -> None:
    policy = RetryPolicy(max_attempts=10, base_s=0.5, cap_s=4.0)
    assert policy.backoff(1, rng=lambda: 1.0) == pytest.approx(0.5)
    assert policy.backoff(2, rng=lambda: 1.0) == pytest.approx(1.0)
    assert policy.backoff(3, rng=lambda: 1.0) == pytest.approx(2.0)
    assert policy.backoff(9, rng=lambda: 1.0) == pytest.approx(4.0)
    assert policy.backoff(9, rng=lambda: 0.0) == 0.0


def test_retry_after_is_a_floor() -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=4.0)
    assert policy.delay(1, retry_after=7.0, rng=lambda: 1.0) == pytest.approx(7.0)
    assert policy.delay(3, retry_after=0.1, rng=lambda: 1.0) == pytest.approx(2.0)
    assert policy.delay(3, retry_after=None, rng=lambda: 0.5) == pytest.approx(1.0)


def test_exhaustion() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert not policy.exhausted(2)
    assert policy.exhausted(3)
