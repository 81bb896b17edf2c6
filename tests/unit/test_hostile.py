"""Records written to hurt the worker (issue 23): each is refused, dead-lettered
and acked, and the worker goes on serving the next record."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import ConfigError, InvalidRequest, SecretError
from pipeline.lifecycle.checks import MAX_HEADER_BYTES, check_envelope
from pipeline.lifecycle.completion import Completion, CompletionConfig, Deliveries, Reporter
from pipeline.lifecycle.outcomes import OutcomeBuilder
from pipeline.limits.pricing import PriceTable
from pipeline.ops.metrics import Metrics
from pipeline.partners import Partner, check_partner_id
from pipeline.records import SourceRecord
from pipeline.security.signing import replay_headers, validate_ref
from tests.unit.test_dispatch import CODEC, FakeClaude, FakePublisher, Harness


async def _served_after(h: Harness, hostile: SourceRecord) -> dict[str, Any]:
    """Send `hostile` then a good record; both acked; the hostile one's dead letter."""
    await h.dispatcher.start()
    try:
        await h.send(hostile)
        await h.send(h.record("still here"))
        await h.settle(2)
    finally:
        await h.dispatcher.stop(0)
    assert sorted(h.acked) == sorted([hostile.offset, h.offset])
    ok = [r for r in h.responses() if r["status"] == "ok"]
    assert [r["request_id"] for r in ok] == [f"r{h.offset}"]  # the worker went on
    (dead,) = h.dead_letters()
    return dead


async def test_a_signed_record_created_before_time_began_is_refused_not_fatal() -> None:
    # Before: the refusal's latency_ms (now - created_at_ms) overflowed Avro's
    # long in fastavro, nothing caught it, and the worker stopped, on every restart.
    h = Harness(FakeClaude())
    dead = await _served_after(h, h.record("old", now_ms=-(2**62)))
    assert dead["reason"] == "invalid_request"
    assert "created_at_ms" in dead["detail"]
    (refusal,) = [r for r in h.responses() if r["status"] == "error"]
    assert refusal["error_type"] == "invalid_request"
    assert 0 <= refusal["latency_ms"] < 2**63


async def test_a_signed_record_from_the_far_future_is_refused() -> None:
    h = Harness(FakeClaude())
    far = int(time.time() * 1000) + 10**15
    dead = await _served_after(h, h.record("future", now_ms=far))
    assert (dead["reason"], "created_at_ms" in dead["detail"]) == ("invalid_request", True)


async def test_a_huge_signed_replay_count_is_refused_not_fatal() -> None:
    # Before: x-replay-count 10**30 (signed) passed `isdigit`, and its dead
    # letter's replay_count (an Avro int) could not be encoded: the worker stopped.
    h = Harness(FakeClaude())
    good = h.record("replayed")
    value = good.value or b""
    headers = replay_headers([], "acme", b"secret-acme", value, 10**30, time.time())
    hostile = SourceRecord(good.topic, 0, good.offset, good.key, value, headers)
    dead = await _served_after(h, hostile)
    assert dead["reason"] == "auth_failed"
    assert "x-replay-count" in dead["detail"]


async def test_an_outcome_that_cannot_be_encoded_still_ends_in_a_dead_letter_and_is_acked() -> None:
    # Whatever slips past intake's bounds, encoding an outcome must not stop the
    # worker: the record is dead-lettered (internal_error) and acked.
    publisher = FakePublisher()
    deliveries = Deliveries()
    builder = OutcomeBuilder(PriceTable(), lambda: 1)
    completion = Completion(
        publisher=publisher,
        codec=CODEC,
        builder=builder,
        deliveries=deliveries,
        reporter=Reporter(Metrics()),
        guard=None,
        config=CompletionConfig(),
    )
    record = SourceRecord("claude.requests.acme", 0, 9, b"r9", b"v", [])
    acked: list[int] = []

    async def ack() -> None:
        acked.append(record.offset)

    deliveries.arrive(record.position, ack)
    outcome = builder.failure(record, InvalidRequest("x"), partner_id="acme", request_id="r9")
    assert outcome.response is not None
    outcome.response["attempts"] = 10**30  # an int no Avro int holds
    await completion.finish(outcome)
    assert acked == [9]
    (dead,) = publisher.decoded("claude.dlq", "DeadLetter")
    assert dead["reason"] == "internal_error"
    assert "OverflowError" in dead["detail"] or "SchemaError" in dead["detail"]
    (response,) = publisher.decoded("claude.responses.", "ClaudeResponse")
    assert response["error_type"] == "internal_error"


def test_many_headers_are_refused_in_linear_time() -> None:
    # Before: duplicates were found with names.count(n) per name, before the
    # size limit: 40k headers held the event loop for 40 s.
    headers = [(f"h{i}", b"") for i in range(200_000)]
    record = SourceRecord("claude.requests.acme", 0, 1, b"r", b"v", headers)
    started = time.perf_counter()
    try:
        check_envelope(record, 1 << 20)
    except Exception as exc:
        refused = str(exc)
    took = time.perf_counter() - started
    assert f"{MAX_HEADER_BYTES}-byte limit" in refused or "headers" in refused
    assert took < 0.5, f"{took:.2f} s for 200k headers"


# -- 7: identifiers are matched whole ---------------------------------------------

_CONTROL = st.sampled_from([chr(c) for c in [*range(0x20), 0x7F, 0x85, 0x2028]])


def test_a_partner_id_with_a_trailing_newline_is_refused() -> None:
    # Before: PARTNER_ID.match with `$` accepted "acme\n", and the TOML file broke.
    with pytest.raises(ConfigError):
        check_partner_id("acme\n")


@given(st.text(alphabet="abc-_0", min_size=1, max_size=8), _CONTROL, st.integers(0, 8))
def test_no_identifier_admits_a_control_character(base: str, bad: str, at: int) -> None:
    name = base[:at] + bad + base[at:]
    with pytest.raises(ConfigError):
        check_partner_id(name)
    with pytest.raises(ConfigError):
        Partner("acme", "env:PARTNER_ACME", allowed_models=(f"claude-{name}",))
    with pytest.raises(SecretError):
        validate_ref(f"file:/secrets/{name}")
    with pytest.raises(SecretError):
        validate_ref(f"env:PARTNER_{name}")


# -- D: a lone surrogate is refused at intake; a call never made is never charged --


def _tool_record(h: Harness, schema_text: str) -> SourceRecord:
    from pipeline.client import request_record
    from pipeline.security.signing import signed_headers

    h.offset += 1
    rid = f"r{h.offset}"
    params = {
        "model": "claude-haiku-4-5",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "t", "input_schema": {"type": "object", "description": "X"}}],
    }
    record = request_record(params, partner_id="acme", request_id=rid)
    (name, tool) = record["tools"][0]
    record["tools"] = [(name, {**tool, "input_schema_json": schema_text})]
    value = CODEC.encode("ClaudeRequest", record)
    headers = signed_headers("acme", b"secret-acme", value)
    return SourceRecord("claude.requests.acme", 0, h.offset, rid.encode(), value, headers)


async def test_a_lone_surrogate_in_a_json_field_is_refused_at_intake() -> None:
    # Before: '\udfff' passed intake, encoding the body for Claude failed, and the
    # request ended as internal_error with its budget charged the worst case.
    h = Harness(FakeClaude())
    hostile = _tool_record(h, '{"type":"object","description":"\\udfff"}')
    dead = await _served_after(h, hostile)
    assert dead["reason"] == "invalid_request"
    assert "surrogate" in dead["detail"]
    assert h.claude.calls == ["still here"]
    # an escaped pair is one character, and fine
    pair = _tool_record(Harness(FakeClaude()), '{"type":"object","description":"\\ud83d\\ude00"}')
    assert Harness(FakeClaude()).intake.admit(pair).request_id == pair.key.decode()  # type: ignore[union-attr]


async def test_a_call_that_could_not_be_made_is_never_charged() -> None:
    # Before: a body that could not be encoded counted as "it may have reached
    # Claude": the partner's budget was charged the request's worst case.
    from pipeline.errors import NotSent
    from pipeline.upstream.claude import ClaudeClient

    client = ClaudeClient("http://127.0.0.1:9", 1.0)
    try:
        params = {
            "model": "m",
            "max_tokens": 1,
            "messages": [{"role": "user", "content": "\udfff"}],
        }
        with pytest.raises(NotSent):
            await client.create("sk-x", params)
    finally:
        await client.close()

    class Unsendable(FakeClaude):
        async def create(
            self, api_key: str, params: Any, *, body: Any = None, headers: Any = None
        ) -> Any:
            if params["messages"][-1]["content"] == "unsendable":
                raise NotSent("the request body could not be encoded") from UnicodeEncodeError(
                    "utf-8", "", 0, 1, "surrogates not allowed"
                )
            return await super().create(api_key, params, body=body)

    probe = Harness(FakeClaude())
    worst = probe.intake.admit(probe.record("x", max_tokens=100)).worst_usd
    h = Harness(Unsendable(), partner=Partner("acme", "env:S", monthly_budget_usd=worst * 1.5))
    await h.dispatcher.start()
    try:
        await h.send(h.record("unsendable", max_tokens=100))
        await h.settle(1)
        await h.send(h.record("fits only if nothing was charged", max_tokens=100))
        await h.settle(2)
    finally:
        await h.dispatcher.stop(0)
    (dead,) = h.dead_letters()
    assert dead["reason"] == "internal_error"
    assert [r["status"] for r in h.responses()] == ["error", "ok"]


# -- 6: a partner never reads the worker's file names ---------------------------


def test_an_unreadable_signing_secret_gives_the_partner_a_reason_not_a_path(
    tmp_path: Any,
) -> None:
    # Before: the partner's auth_failed response quoted "cannot read secret file
    # /secrets/partners/acme.signing: No such file or directory".
    from pipeline.lifecycle.intake import Intake, Rejected
    from pipeline.partners import Registry
    from pipeline.security.signing import SecretResolver

    missing = tmp_path / "partners" / "acme.signing"
    registry = Registry()
    registry.apply("acme", Partner("acme", f"file:{missing}"))
    intake = Intake(registry, CODEC, SecretResolver({}), 300.0)
    record = Harness(FakeClaude()).record("hello")
    with pytest.raises(Rejected) as info:
        intake.admit(record)
    builder = OutcomeBuilder(PriceTable(), lambda: 1)
    rejected = info.value
    outcome = builder.failure(
        record, rejected.error, partner_id="acme", request_id=rejected.request_id
    )
    assert outcome.response is not None
    assert outcome.dead_letter is not None
    assert str(missing) not in str(outcome.response["error_message"])
    assert "secret" in str(outcome.response["error_message"])
    assert str(missing) in outcome.dead_letter["detail"]  # ops still see why


def test_an_unknown_http_path_is_404_not_the_metrics_page() -> None:
    # Before: every path but /healthz and /readyz answered with the metrics, so a
    # probe configured as /ready never failed.
    import urllib.error
    import urllib.request

    from pipeline.ops.health import Health, HttpEndpoint

    metrics = Metrics()
    endpoint = HttpEndpoint(metrics.registry, Health(metrics.ready))
    port = endpoint.serve(0, "127.0.0.1")
    try:
        base = f"http://127.0.0.1:{port}"
        for path in ("/ready", "/", "/metricsx", "/healthz/../metrics"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(base + path, timeout=5)  # noqa: S310
            info.value.close()
            assert info.value.code == 404, path
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:  # noqa: S310
            assert b"claude_worker_ready" in r.read()
    finally:
        endpoint.close()
