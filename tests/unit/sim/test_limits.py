from __future__ import annotations

import pytest

from pipeline.dev.sim.limits import KeyLimits, TokenBucket, rfc3339
from tests.fakes import FakeClock


def test_bucket_refills_continuously_up_to_capacity(clock: FakeClock) -> None:
    bucket = TokenBucket(limit=60, capacity=60, now=clock())
    bucket.take(60, clock())
    assert bucket.remaining(clock()) == 0
    clock.advance(10)  # 1 per second
    assert bucket.remaining(clock()) == 10
    clock.advance(1_000)
    assert bucket.remaining(clock()) == 60


def test_wait_for_is_deficit_over_rate(clock: FakeClock) -> None:
    bucket = TokenBucket(limit=120, capacity=120, now=clock())
    bucket.take(120, clock())
    assert bucket.wait_for(1, clock()) == pytest.approx(0.5)
    assert bucket.wait_for(10, clock()) == pytest.approx(5.0)


def test_headers_give_exact_remaining_and_reset(clock: FakeClock, wall: FakeClock) -> None:
    limits = KeyLimits(rpm=60, itpm=6_000, otpm=600, burst=None, clock=clock, wall=wall)
    assert limits.admit(input_tokens=1_000) is None
    limits.charge_output(300)
    h = limits.headers()
    assert h["anthropic-ratelimit-requests-limit"] == "60"
    assert h["anthropic-ratelimit-requests-remaining"] == "59"
    # one request at 1/s: full again in 1 s
    assert h["anthropic-ratelimit-requests-reset"] == "2026-01-01T00:00:01Z"
    assert h["anthropic-ratelimit-input-tokens-remaining"] == "5000"
    # 1,000 tokens at 100/s: full in 10 s
    assert h["anthropic-ratelimit-input-tokens-reset"] == "2026-01-01T00:00:10Z"
    assert h["anthropic-ratelimit-output-tokens-remaining"] == "300"
    # 300 tokens at 10/s: 30 s
    assert h["anthropic-ratelimit-output-tokens-reset"] == "2026-01-01T00:00:30Z"
    # output is the tighter token limit (50% left against 83%)
    assert h["anthropic-ratelimit-tokens-limit"] == "600"
    assert h["anthropic-ratelimit-tokens-remaining"] == "300"


def test_burst_over_rpm_yields_exact_number_of_429s(clock: FakeClock, wall: FakeClock) -> None:
    limits = KeyLimits(rpm=100, itpm=0, otpm=0, burst=None, clock=clock, wall=wall)
    outcomes = [limits.admit(10) for _ in range(130)]
    assert sum(o is None for o in outcomes) == 100
    rejected = [o for o in outcomes if o is not None]
    assert len(rejected) == 30
    assert all(r.resource == "requests" for r in rejected)
    # one request refills in 0.6 s: retry-after rounds up to whole seconds
    assert {r.retry_after for r in rejected} == {1}
    assert "100 requests per minute" in rejected[0].message


def test_burst_flag_shrinks_all_capacities_in_proportion(clock: FakeClock, wall: FakeClock) -> None:
    # 60 RPM enforced as 1 request per second; ITPM 6,000 shrinks to 100
    limits = KeyLimits(rpm=60, itpm=6_000, otpm=0, burst=1, clock=clock, wall=wall)
    assert limits.admit(50) is None
    second = limits.admit(50)
    assert second is not None
    assert second.resource == "requests"
    clock.advance(1.0)
    assert limits.admit(50) is None
    clock.advance(1.0)
    over = limits.admit(101)  # more than the shrunken input bucket holds
    assert over is not None
    assert over.resource == "input_tokens"


def test_rejection_takes_nothing(clock: FakeClock, wall: FakeClock) -> None:
    limits = KeyLimits(rpm=10, itpm=100, otpm=0, burst=None, clock=clock, wall=wall)
    assert limits.admit(200) is not None  # refused for input tokens
    assert limits.headers()["anthropic-ratelimit-requests-remaining"] == "10"


def test_retry_after_names_the_longest_wait(clock: FakeClock, wall: FakeClock) -> None:
    limits = KeyLimits(rpm=60, itpm=600, otpm=0, burst=None, clock=clock, wall=wall)
    assert limits.admit(600) is None
    r = limits.admit(300)  # input needs 300 tokens at 10/s = 30 s; requests are fine
    assert r is not None
    assert (r.resource, r.retry_after) == ("input_tokens", 30)
    clock.advance(29.5)
    assert limits.admit(300) is not None
    clock.advance(0.5)
    assert limits.admit(300) is None


def test_output_debt_blocks_admission_until_repaid(clock: FakeClock, wall: FakeClock) -> None:
    limits = KeyLimits(rpm=0, itpm=0, otpm=60, burst=None, clock=clock, wall=wall)
    assert limits.admit(1) is None
    limits.charge_output(70)  # produced more than the bucket held: 10 in debt
    r = limits.admit(1)
    assert r is not None
    assert (r.resource, r.retry_after) == ("output_tokens", 11)
    clock.advance(11)
    assert limits.admit(1) is None


def test_unlimited_resources_have_no_headers(clock: FakeClock, wall: FakeClock) -> None:
    limits = KeyLimits(rpm=0, itpm=0, otpm=0, burst=None, clock=clock, wall=wall)
    assert all(limits.admit(10**9) is None for _ in range(1_000))
    assert limits.headers() == {}


def test_rfc3339_rounds_up_to_whole_seconds() -> None:
    assert rfc3339(1_767_225_600.2) == "2026-01-01T00:00:01Z"
