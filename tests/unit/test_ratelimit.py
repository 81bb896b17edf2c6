from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.partners import Partner
from pipeline.ratelimit import Bucket, Cost, Limiter, key_id
from tests.fakes import FakeClock

P = Partner("acme", "env:X")
SMALL = Cost(input_tokens=10, output_tokens=10)


def _headers(
    requests: tuple[int, int] | None = None, inp: tuple[int, int] | None = None
) -> dict[str, str]:
    out: dict[str, str] = {}
    if requests:
        out["anthropic-ratelimit-requests-limit"] = str(requests[0])
        out["anthropic-ratelimit-requests-remaining"] = str(requests[1])
    if inp:
        out["anthropic-ratelimit-input-tokens-limit"] = str(inp[0])
        out["anthropic-ratelimit-input-tokens-remaining"] = str(inp[1])
    return out


# -- the bucket ---------------------------------------------------------------------


def test_bucket_arithmetic_is_exact(clock: FakeClock) -> None:
    b = Bucket(capacity=60, rate_per_s=1.0, clock=clock)
    assert b.available() == 60
    b.consume(60)
    assert b.wait_time(1) == pytest.approx(1.0)
    assert b.wait_time(10) == pytest.approx(10.0)
    clock.advance(4)
    assert b.available() == pytest.approx(4)
    assert b.wait_time(4) == 0.0
    b.refund(100)
    assert b.available() == 60


def test_a_charge_bigger_than_the_bucket_waits_for_empty_then_runs_a_debt(clock: FakeClock) -> None:
    b = Bucket(capacity=100, rate_per_s=10.0, clock=clock)
    b.consume(50)
    assert b.wait_time(500) == pytest.approx(5.0)  # until empty
    clock.advance(5)
    assert b.wait_time(500) == 0.0
    b.consume(500)
    assert b.wait_time(1) == pytest.approx((400 + 1) / 10)


def test_tighten_never_loosens(clock: FakeClock) -> None:
    b = Bucket(capacity=100, rate_per_s=1.0, clock=clock)
    b.tighten_to(30)
    assert b.available() == pytest.approx(30)
    b.tighten_to(80)
    assert b.available() == pytest.approx(30)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["consume", "advance", "refund"]), st.floats(0, 50)), max_size=40
    )
)
def test_bucket_never_holds_more_than_capacity_or_less_than_zero_debt_free(
    ops: list[tuple[str, float]],
) -> None:
    clock = FakeClock()
    b = Bucket(capacity=40, rate_per_s=2.0, clock=clock)
    for op, x in ops:
        if op == "advance":
            clock.advance(x)
        elif op == "consume" and b.wait_time(x) == 0:
            b.consume(x)
        elif op == "refund":
            b.refund(x)
        assert b.available() <= 40 + 1e-9
        assert b.available() >= -10  # a single charge of at most 50 may run a debt of 10


# -- partner limits ---------------------------------------------------------------------


def test_partner_rpm_and_tpm(clock: FakeClock) -> None:
    lim = Limiter(clock=clock, upstream={"requests": 10_000})
    kid = key_id("k")
    slow = Partner("slow", "env:X", rpm=2)
    lim.consume(slow, kid, SMALL)
    lim.consume(slow, kid, SMALL)
    v = lim.wait(slow, kid, SMALL)
    assert v.reason == "partner_rpm"
    assert v.wait_s == pytest.approx(30.0)
    thin = Partner("thin", "env:X", tpm=120)  # 2 tokens per second
    lim.consume(thin, kid, Cost(60, 40))
    v = lim.wait(thin, kid, Cost(20, 20))  # 100 + 40 > 120: wait for 20 tokens
    assert v.reason == "partner_tpm"
    assert v.wait_s == pytest.approx(10.0)
    clock.advance(10)
    assert lim.wait(thin, kid, Cost(20, 20)).go
    # a partner without limits is never held
    assert lim.wait(P, kid, SMALL).go


def test_settle_refunds_what_was_not_used(clock: FakeClock) -> None:
    lim = Limiter(
        clock=clock, upstream={"requests": 60, "input_tokens": 1000, "output_tokens": 1000}
    )
    p = Partner("p", "env:X", tpm=1000)
    kid = key_id("k")
    charged = Cost(input_tokens=100, output_tokens=900)
    lim.consume(p, kid, charged)
    assert lim.wait(p, kid, Cost(10, 200)).reason == "partner_tpm"
    lim.settle(p, kid, charged, Cost(100, 50))
    assert lim.wait(p, kid, Cost(10, 200)).go


# -- keys ---------------------------------------------------------------------------------


def test_configured_limits_hold_the_key(clock: FakeClock) -> None:
    lim = Limiter(clock=clock, upstream={"requests": 60})
    kid = key_id("k")
    for _ in range(60):
        assert lim.wait(P, kid, SMALL).go
        lim.consume(P, kid, SMALL)
    v = lim.wait(P, kid, SMALL)
    assert v.reason == "key_requests"
    assert v.wait_s == pytest.approx(1.0)


def test_unknown_limits_probe_one_request_at_a_time(clock: FakeClock) -> None:
    lim = Limiter(clock=clock)
    kid = key_id("k")
    assert lim.wait(P, kid, SMALL).go
    lim.consume(P, kid, SMALL)
    assert lim.wait(P, kid, SMALL).reason == "probing"
    lim.observe(kid, _headers(requests=(600, 19)), SMALL)
    lim.settle(P, kid, SMALL, SMALL)
    # the first answer teaches limit 600 and a bucket of at least 20
    for _ in range(19):
        assert lim.wait(P, kid, SMALL).go
        lim.consume(P, kid, SMALL)
    v = lim.wait(P, kid, SMALL)
    assert v.reason == "key_requests"
    assert v.wait_s == pytest.approx(0.1)  # 600 RPM refills one every 100 ms


def test_headers_tighten_the_view_when_someone_else_spends(clock: FakeClock) -> None:
    lim = Limiter(clock=clock, upstream={"requests": 600})
    kid = key_id("k")
    lim.consume(P, kid, SMALL)
    # another worker or application used the key: the server says 5 left
    lim.observe(kid, _headers(requests=(600, 5)), SMALL)
    lim.settle(P, kid, SMALL, SMALL)
    for _ in range(5):
        assert lim.wait(P, kid, SMALL).go
        lim.consume(P, kid, SMALL)
    assert lim.wait(P, kid, SMALL).reason == "key_requests"


def test_a_429_pauses_the_whole_key(clock: FakeClock) -> None:
    lim = Limiter(clock=clock, upstream={"requests": 600})
    kid, other = key_id("k"), key_id("other")
    lim.consume(P, kid, SMALL)
    lim.settle(P, kid, SMALL, None)  # refused: nothing was used
    lim.pause(kid, 3.0)
    v = lim.wait(P, kid, SMALL)
    assert v.reason == "paused"
    assert v.wait_s == pytest.approx(3.0)
    assert lim.wait(P, other, SMALL).go  # another key is unaffected
    clock.advance(3.0)
    assert lim.wait(P, kid, SMALL).go


def test_two_workers_take_their_share_and_borrow_only_with_slack(clock: FakeClock) -> None:
    lim = Limiter(clock=clock, upstream={"requests": 600}, slack=0.1)
    lim.set_share(0.5)
    kid = key_id("k")
    # a full bucket is slack: borrowing beyond the share is fine
    for _ in range(500):
        assert lim.wait(P, kid, SMALL).go
        lim.consume(P, kid, SMALL)
    # 100 left (slack threshold is 60): still borrowing, until the slack is gone
    sent = 0
    while lim.wait(P, kid, SMALL).go:
        lim.consume(P, kid, SMALL)
        sent += 1
    assert sent == 100 - 60
    # the share bucket is spent: only refill above the slack is borrowed
    clock.advance(1.0)
    sent = 0
    while lim.wait(P, kid, SMALL).go:
        lim.consume(P, kid, SMALL)
        sent += 1
    assert sent == 10


def test_below_the_slack_a_worker_spends_only_its_share(clock: FakeClock) -> None:
    lim = Limiter(clock=clock, upstream={"requests": 600}, slack=0.5)
    lim.set_share(0.25)
    kid = key_id("k")
    # a first answer shows the full bucket; then the other workers drain it
    # to its slack threshold
    for remaining in (599, 300):
        lim.consume(P, kid, SMALL)
        lim.observe(kid, _headers(requests=(600, remaining)), SMALL)
        lim.settle(P, kid, SMALL, SMALL)
    sent = 0
    while lim.wait(P, kid, SMALL).go:
        lim.consume(P, kid, SMALL)
        sent += 1
    assert sent == 150 - 2  # our share bucket: a quarter of 600, two already spent
    v = lim.wait(P, kid, SMALL)
    assert v.reason == "key_requests"
    assert v.wait_s == pytest.approx(1 / 2.5)  # a quarter of 10/s


def test_learned_capacity_caps_bursts(clock: FakeClock) -> None:
    """A server enforcing 600 RPM as a bucket of 20 must not see a burst of 600."""
    lim = Limiter(clock=clock, upstream={"requests": 600})
    kid = key_id("k")
    lim.consume(P, kid, SMALL)
    lim.observe(kid, _headers(requests=(600, 19)), SMALL)
    lim.settle(P, kid, SMALL, SMALL)
    clock.advance(3600)  # idle for an hour
    burst = 0
    while lim.wait(P, kid, SMALL).go:
        lim.consume(P, kid, SMALL)
        burst += 1
    assert burst == 20
