from __future__ import annotations

from typing import Any

import pytest

from pipeline.dev.sim.config import SimConfig, parse_fail_rate
from pipeline.dev.sim.engine import Simulator
from pipeline.dev.sim.errors import ApiError
from tests.fakes import FakeClock

HEADERS = {"x-api-key": "k1", "anthropic-version": "2023-06-01"}


def _body(text: str = "hello") -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-6",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": text}],
    }


def _sim(clock: FakeClock, wall: FakeClock, **cfg: Any) -> Simulator:
    return Simulator(SimConfig(**cfg), clock=clock, wall=wall)


def test_auth(clock: FakeClock, wall: FakeClock) -> None:
    sim = _sim(clock, wall, keys=frozenset({"good"}))
    with pytest.raises(ApiError) as info:
        sim.authenticate({"anthropic-version": "2023-06-01"})
    assert (info.value.status, info.value.error_type) == (401, "authentication_error")
    with pytest.raises(ApiError) as info:
        sim.authenticate({"x-api-key": "bad", "anthropic-version": "2023-06-01"})
    assert info.value.status == 401
    with pytest.raises(ApiError) as info:
        sim.authenticate({"x-api-key": "good"})
    assert (info.value.status, info.value.error_type) == (400, "invalid_request_error")
    assert sim.authenticate({"x-api-key": "good", "anthropic-version": "2023-06-01"}) == "good"
    assert sim.authenticate({"authorization": "Bearer good", "anthropic-version": "2026-10-21"})


def test_success_bills_and_counts(clock: FakeClock, wall: FakeClock) -> None:
    sim = _sim(clock, wall)
    key = sim.authenticate(HEADERS)
    prepared = sim.prepare(key, _body())
    message = sim.complete(prepared, "msg_1")
    assert message["usage"]["input_tokens"] == 3 + 4 + 2
    stats = sim.stats_snapshot()["keys"]["k1"]
    assert stats["requests"] == {"200": 1}
    assert stats["output_tokens"] == message["usage"]["output_tokens"]


def test_rate_limited_request_carries_retry_after_and_headers(
    clock: FakeClock, wall: FakeClock
) -> None:
    sim = _sim(clock, wall, rpm=2, itpm=0, otpm=0)
    sim.prepare("k", _body())
    sim.prepare("k", _body())
    with pytest.raises(ApiError) as info:
        sim.prepare("k", _body())
    err = info.value
    assert (err.status, err.error_type) == (429, "rate_limit_error")
    assert err.headers["retry-after"] == "30"  # 2 RPM: one request every 30 s
    assert err.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert sim.stats_snapshot()["keys"]["k"]["requests"] == {"429": 1}


def test_keys_have_separate_buckets(clock: FakeClock, wall: FakeClock) -> None:
    sim = _sim(clock, wall, rpm=1, itpm=0, otpm=0)
    sim.prepare("a", _body())
    sim.prepare("b", _body())
    with pytest.raises(ApiError):
        sim.prepare("a", _body())


def test_seeded_faults_reproduce(clock: FakeClock, wall: FakeClock) -> None:
    rates = {k: p for k, p, _ in (parse_fail_rate("500=0.2"), parse_fail_rate("529=0.2"))}

    def run() -> list[int]:
        sim = _sim(clock, wall, fail_rates=rates, seed=42, rpm=0, itpm=0, otpm=0)
        statuses = []
        for i in range(200):
            try:
                sim.complete(sim.prepare("k", _body(f"m{i}")), "id")
                statuses.append(200)
            except ApiError as exc:
                statuses.append(exc.status)
        return statuses

    first = run()
    assert first == run()
    assert {500, 529, 200} == set(first)


def test_injected_529_is_overloaded_error(clock: FakeClock, wall: FakeClock) -> None:
    sim = _sim(clock, wall, fail_rates={"529": 1.0}, seed=1)
    with pytest.raises(ApiError) as info:
        sim.prepare("k", _body())
    assert (info.value.status, info.value.error_type) == (529, "overloaded_error")


def test_transport_faults_are_returned_not_raised(clock: FakeClock, wall: FakeClock) -> None:
    sim = _sim(clock, wall, fail_rates={"reset": 1.0}, seed=1)
    assert sim.prepare("k", _body()).fault == "reset"


def test_latency_includes_per_token_time(clock: FakeClock, wall: FakeClock) -> None:
    sim = _sim(clock, wall, latency_ms=100, ms_per_output_token=10, output_tokens=20)
    assert sim.prepare("k", _body()).delay_s == pytest.approx(0.3)


def test_reset_forgets_everything(clock: FakeClock, wall: FakeClock) -> None:
    sim = _sim(clock, wall, rpm=1, itpm=0, otpm=0)
    sim.prepare("k", _body())
    sim.reset()
    assert sim.stats_snapshot()["keys"] == {}
    sim.prepare("k", _body())  # the bucket is full again


def test_batches_end_after_delay_with_per_request_results(
    clock: FakeClock, wall: FakeClock
) -> None:
    sim = _sim(clock, wall, batch_delay_s=5)
    batch = sim.batches.create(
        "k",
        {
            "requests": [
                {"custom_id": "good", "params": _body("batch one")},
                {"custom_id": "bad", "params": {**_body(), "max_tokens": -1}},
            ]
        },
    )
    obj = sim.batches.to_object(sim.batches.get("k", batch.id), "http://x")
    assert obj["processing_status"] == "in_progress"
    assert obj["results_url"] is None
    with pytest.raises(ApiError):
        sim.batches.results_jsonl("k", batch.id)
    clock.advance(5)
    obj = sim.batches.to_object(sim.batches.get("k", batch.id), "http://x")
    assert obj["processing_status"] == "ended"
    assert obj["request_counts"]["succeeded"] == 1
    assert obj["request_counts"]["errored"] == 1
    assert obj["results_url"] == f"http://x/v1/messages/batches/{batch.id}/results"
    lines = sim.batches.results_jsonl("k", batch.id).decode().splitlines()
    assert '"custom_id": "good"' in lines[0]
    assert "batch one" in lines[0]


def test_batches_are_private_to_their_key(clock: FakeClock, wall: FakeClock) -> None:
    sim = _sim(clock, wall)
    batch = sim.batches.create("k", {"requests": [{"custom_id": "a", "params": _body()}]})
    with pytest.raises(ApiError) as info:
        sim.batches.get("other", batch.id)
    assert info.value.status == 404


def test_cancel_ends_batch_with_canceled_requests(clock: FakeClock, wall: FakeClock) -> None:
    sim = _sim(clock, wall, batch_delay_s=60)
    batch = sim.batches.create("k", {"requests": [{"custom_id": "a", "params": _body()}]})
    sim.batches.cancel("k", batch.id)
    obj = sim.batches.to_object(batch, None)
    assert obj["processing_status"] == "ended"
    assert obj["request_counts"]["canceled"] == 1
    assert obj["cancel_initiated_at"] is not None


def test_key_scoped_faults_spare_other_keys(clock: FakeClock, wall: FakeClock) -> None:
    kind, p, key = parse_fail_rate("529=1.0@broken")
    assert key == "broken"
    sim = _sim(clock, wall, key_fail_rates={"broken": {kind: p}})
    with pytest.raises(ApiError) as info:
        sim.prepare("broken", _body())
    assert info.value.status == 529
    sim.complete(sim.prepare("healthy", _body()), "id")


def test_the_bill_is_anthropics_by_token_kind_and_tier(clock: FakeClock, wall: FakeClock) -> None:
    from pipeline.dev.sim.catalog import bill, find_model

    sonnet = find_model("claude-sonnet-4-6")
    assert sonnet is not None
    # $3 / $15 per million; writes 1.25x and 2x input, reads 0.1x; batches half
    assert bill(sonnet, input_tokens=1_000_000, output_tokens=0) == pytest.approx(3.0)
    assert bill(sonnet, input_tokens=0, output_tokens=1_000_000) == pytest.approx(15.0)
    tiers = bill(sonnet, input_tokens=0, output_tokens=0, cache_5m=10**6, cache_1h=10**6)
    assert tiers == pytest.approx(3.75 + 6.0)
    assert bill(sonnet, input_tokens=0, output_tokens=0, cache_read=10**6) == pytest.approx(0.3)
    assert bill(sonnet, input_tokens=10**6, output_tokens=10**6, batch=True) == pytest.approx(9.0)
    sim = _sim(clock, wall, cache_min_tokens=10)
    key = sim.authenticate(HEADERS)
    cached = {
        **_body(),
        "system": [
            {"type": "text", "text": "policy " * 40, "cache_control": {"type": "ephemeral"}}
        ],
    }
    first = sim.complete(sim.prepare(key, cached), "msg_1")["usage"]
    second = sim.complete(sim.prepare(key, cached), "msg_2")["usage"]
    assert first["cache_creation_input_tokens"] > 0
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    expected = sum(
        bill(
            sonnet,
            input_tokens=u["input_tokens"],
            output_tokens=u["output_tokens"],
            cache_5m=u["cache_creation_input_tokens"],
            cache_read=u["cache_read_input_tokens"],
        )
        for u in (first, second)
    )
    assert sim.stats_snapshot()["keys"]["k1"]["cost_usd"] == pytest.approx(expected, abs=1e-9)
    assert sim.stats_snapshot()["totals"]["cost_usd"] == pytest.approx(expected, abs=1e-9)
    # a batch's result is billed at half the price
    sim.batch_result("kb", _body("in a batch"))
    (usage,) = [sim.stats["kb"]]
    full = bill(sonnet, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)
    assert sim.stats_snapshot()["keys"]["kb"]["cost_usd"] == pytest.approx(full / 2, abs=1e-9)
