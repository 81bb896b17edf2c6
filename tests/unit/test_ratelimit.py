from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.limits.buckets import Bucket
from pipeline.limits.ratelimit import Cost, KeyState, Limiter, key_id
from pipeline.partners import Partner
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


def test_a_worker_enforces_its_share_of_a_partner_s_rpm(clock: FakeClock) -> None:
    # Before, each of N workers gave a partner its whole RPM: N times it in all.
    shares = {"busy": 0.5}
    lim = Limiter(clock=clock, upstream={"requests": 10_000},
                  partner_share=lambda pid: shares[pid])  # fmt: skip
    kid = key_id("k")
    busy = Partner("busy", "env:X", rpm=60)
    for _ in range(30):  # half of 60 at once
        assert lim.wait(busy, kid, SMALL).go
        lim.consume(busy, kid, SMALL)
    v = lim.wait(busy, kid, SMALL)
    assert v.reason == "partner_rpm"
    assert v.wait_s == pytest.approx(2.0)  # refilled at half of 1/s
    # a rebalance gives this worker all of the partner: what was used stays used
    shares["busy"] = 1.0
    for _ in range(30):  # 30 of 60 are left
        assert lim.wait(busy, kid, SMALL).go
        lim.consume(busy, kid, SMALL)
    v = lim.wait(busy, kid, SMALL)
    assert v.reason == "partner_rpm"
    assert v.wait_s == pytest.approx(1.0)  # refilled at the whole 1/s


def test_settle_refunds_what_was_not_used(clock: FakeClock) -> None:
    lim = Limiter(
        clock=clock, upstream={"requests": 60, "input_tokens": 1000, "output_tokens": 1000}
    )
    p = Partner("p", "env:X", tpm=1000)
    kid = key_id("k")
    charged = Cost(input_tokens=100, output_tokens=900)
    seq = lim.consume(p, kid, charged)
    assert lim.wait(p, kid, Cost(10, 200)).reason == "partner_tpm"
    lim.settle(p, kid, seq, charged, Cost(100, 50))
    assert lim.wait(p, kid, Cost(10, 200)).go


# -- keys ---------------------------------------------------------------------------------


def test_configured_limits_hold_the_key(clock: FakeClock) -> None:
    lim = Limiter(clock=clock, upstream={"requests": 60})
    kid = key_id("k")
    for _ in range(59):  # one request of the bucket stays in reserve (clock skew)
        assert lim.wait(P, kid, SMALL).go
        lim.consume(P, kid, SMALL)
    v = lim.wait(P, kid, SMALL)
    assert v.reason == "key_requests"
    assert v.wait_s == pytest.approx(1.0)


def test_unknown_limits_probe_one_request_at_a_time(clock: FakeClock) -> None:
    lim = Limiter(clock=clock)
    kid = key_id("k")
    assert lim.wait(P, kid, SMALL).go
    seq = lim.consume(P, kid, SMALL)
    assert lim.wait(P, kid, SMALL).reason == "probing"
    lim.observe(kid, _headers(requests=(600, 19)), SMALL, seq)
    lim.settle(P, kid, seq, SMALL, SMALL)
    # the first answer teaches limit 600 and a bucket of at least 19; of the 19
    # left, one stays in reserve
    for _ in range(18):
        assert lim.wait(P, kid, SMALL).go
        lim.consume(P, kid, SMALL)
    v = lim.wait(P, kid, SMALL)
    assert v.reason == "key_requests"
    assert v.wait_s == pytest.approx(0.1)  # 600 RPM refills one every 100 ms


def test_headers_tighten_the_view_when_someone_else_spends(clock: FakeClock) -> None:
    lim = Limiter(clock=clock, upstream={"requests": 600})
    kid = key_id("k")
    seq = lim.consume(P, kid, SMALL)
    # another worker or application used the key: the server says 5 left
    # (one of which stays in reserve)
    lim.observe(kid, _headers(requests=(600, 5)), SMALL, seq)
    lim.settle(P, kid, seq, SMALL, SMALL)
    for _ in range(4):
        assert lim.wait(P, kid, SMALL).go
        lim.consume(P, kid, SMALL)
    assert lim.wait(P, kid, SMALL).reason == "key_requests"


def test_a_429_pauses_the_whole_key(clock: FakeClock) -> None:
    lim = Limiter(clock=clock, upstream={"requests": 600})
    kid, other = key_id("k"), key_id("other")
    seq = lim.consume(P, kid, SMALL)
    lim.settle(P, kid, seq, SMALL, None)  # refused: nothing was used
    lim.pause(kid, 3.0)
    v = lim.wait(P, kid, SMALL)
    assert v.reason == "paused"
    assert v.wait_s == pytest.approx(3.0)
    assert lim.wait(P, other, SMALL).go  # another key is unaffected
    clock.advance(3.0)
    # after the pause one request probes before the rest follow
    assert lim.wait(P, kid, SMALL).go
    lim.consume(P, kid, SMALL)
    assert lim.wait(P, kid, SMALL).reason == "probing"
    lim.observe(kid, _headers(requests=(600, 300)), SMALL)
    assert lim.wait(P, kid, SMALL).go


def test_each_of_two_workers_plans_with_half_the_key(clock: FakeClock) -> None:
    lim = Limiter(clock=clock, upstream={"requests": 600})
    lim.set_share(0.5)
    kid = key_id("k")
    sent = 0
    while lim.wait(P, kid, SMALL).go:
        lim.consume(P, kid, SMALL)
        sent += 1
    assert sent == 300 - 1  # half the bucket, one in reserve
    v = lim.wait(P, kid, SMALL)
    assert v.wait_s == pytest.approx(0.2)  # half of 10/s


def test_roomy_reports_are_believed_both_ways_tight_ones_only_tighten(clock: FakeClock) -> None:
    lim = Limiter(clock=clock, upstream={"requests": 600}, slack=0.5)
    lim.set_share(0.5)
    kid = key_id("k")
    for _ in range(299):
        lim.consume(P, kid, SMALL)
    assert not lim.wait(P, kid, SMALL).go
    # the other worker is idle: Claude reports 500 left, half of which is ours
    lim.observe(kid, _headers(requests=(600, 500)), SMALL)
    sent = 0
    while lim.wait(P, kid, SMALL).go:
        lim.consume(P, kid, SMALL)
        sent += 1
    assert sent == 250 - 1
    # a tight report never loosens the view
    lim.observe(kid, _headers(requests=(600, 200)), SMALL)
    assert not lim.wait(P, kid, SMALL).go


def test_learned_capacity_caps_bursts(clock: FakeClock) -> None:
    """A server enforcing 600 RPM as a bucket of 20 must not see a burst of 600."""
    lim = Limiter(clock=clock, upstream={"requests": 600})
    kid = key_id("k")
    seq = lim.consume(P, kid, SMALL)
    lim.observe(kid, _headers(requests=(600, 19)), SMALL, seq)
    lim.settle(P, kid, seq, SMALL, SMALL)
    clock.advance(3600)  # idle for an hour
    burst = 0
    while lim.wait(P, kid, SMALL).go:
        lim.consume(P, kid, SMALL)
        burst += 1
    # Claude said 19 were left: the bucket holds at least 19 (the header was
    # written after the bucket refilled, so 19 + 1 would be a guess), one of
    # which stays in reserve
    assert burst == 19 - 1


def test_a_header_does_not_count_what_we_sent_after_it(clock: FakeClock) -> None:
    """A roomy header written before our burst arrived must not undo the burst."""
    lim = Limiter(clock=clock, upstream={"requests": 600}, slack=0.5)
    kid = key_id("k")
    first = lim.consume(P, kid, SMALL)
    burst = [lim.consume(P, kid, SMALL) for _ in range(300)]
    # the answer to `first` was written before the burst reached Claude
    lim.observe(kid, _headers(requests=(600, 599)), SMALL, first)
    lim.settle(P, kid, first, SMALL, SMALL)
    sent = 0
    while lim.wait(P, kid, SMALL).go:
        lim.consume(P, kid, SMALL)
        sent += 1
    assert sent == 599 - 300 - 1  # not 598: the burst still counts
    assert len(burst) == 300


def test_what_was_sent_after_a_request_is_counted_exactly_whatever_the_answer_order() -> None:
    """`sent_after` keeps running sums and walks only the older pending requests:
    it must equal counting every pending request sent after `seq`."""
    rng = random.Random(7)
    state = KeyState(resources={})
    sent: list[int] = []
    for _ in range(2_000):
        if sent and rng.random() < 0.45:
            # answers come back about in order, sometimes not
            seq = sent.pop(min(len(sent) - 1, int(rng.expovariate(0.5))))
            later = [c for s, c in state.pending.items() if s > seq]
            got = state.sent_after(seq)
            assert (got.input_tokens, got.output_tokens, got.requests) == (
                sum(c.input_tokens for c in later),
                sum(c.output_tokens for c in later),
                len(later),
            )
            state.answer(seq)
        else:
            sent.append(state.send(Cost(rng.randint(1, 900), rng.randint(1, 300))))
    assert state.pending_tokens == [
        sum(c.input_tokens for c in state.pending.values()),
        sum(c.output_tokens for c in state.pending.values()),
    ]
