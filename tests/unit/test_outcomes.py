"""Outcomes that cannot be published as they are still end the request, never the worker."""

from __future__ import annotations

import json
from typing import Any

from pipeline.client import build_request
from pipeline.errors import AuthFailed
from pipeline.lifecycle.outcomes import OutcomeBuilder, fit, record_size
from pipeline.limits.pricing import PriceTable
from pipeline.messages import fields_to_params
from pipeline.partners import DLQ_TOPIC, Partner
from pipeline.records import Admitted, Job, SourceRecord
from pipeline.schemas import Codec
from pipeline.upstream.claude import to_result

CODEC = Codec()
BUILDER = OutcomeBuilder(PriceTable(), lambda: 1_000)
LIMIT = 4_096


def _job(value: bytes = b"x") -> Job:
    request: Any = build_request("acme", "hello", request_id="r1")
    record = SourceRecord("claude.requests.acme", 0, 7, b"r1", value, [])
    partner = Partner("acme", "env:ACME_SECRET")
    admitted = Admitted(record, partner, request, fields_to_params(request), 0, 0.0, 5)
    job = Job(admitted)
    job.progress.attempts = 1
    return job


def _served(text: str) -> tuple[Job, object]:
    job = _job()
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
               "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
               "stop_sequence": None,
               "usage": {"input_tokens": 10, "output_tokens": 2_000}}  # fmt: skip
    return job, BUILDER.success(job, to_result(message, {}), 3)


def test_an_outcome_within_the_limit_is_unchanged() -> None:
    job, outcome = _served("short")
    fitted, messages = fit(BUILDER, outcome, job, CODEC, LIMIT)  # type: ignore[arg-type]
    assert fitted is outcome
    assert [m.topic for m in messages] == ["claude.responses.acme", "claude.usage"]


def test_a_response_too_large_fails_the_request_but_keeps_what_was_billed() -> None:
    job, outcome = _served("word " * 2_000)
    fitted, messages = fit(BUILDER, outcome, job, CODEC, LIMIT)  # type: ignore[arg-type]
    assert all(record_size(m) <= LIMIT for m in messages)
    assert fitted.status == "error"
    assert fitted.reason == "invalid_request"
    assert fitted.response is not None
    assert "lower max_tokens" in str(fitted.response["error_message"])
    assert fitted.usage is not None
    assert fitted.usage["status"] == "error"
    assert fitted.usage["output_tokens"] == 2_000  # Claude billed it: the bill says so
    assert fitted.usage["cost_usd"] == outcome.usage["cost_usd"] > 0  # type: ignore[attr-defined]


def test_a_dead_letter_too_large_withholds_its_payload_with_size_and_digest() -> None:
    job = _job(b"\x00" * LIMIT)
    outcome = BUILDER.failure(
        job.record, AuthFailed("signature mismatch"), partner_id="acme", request_id="r1"
    )
    fitted, messages = fit(BUILDER, outcome, job, CODEC, LIMIT)
    (dead,) = [m for m in messages if m.topic == DLQ_TOPIC]
    assert record_size(dead) <= LIMIT
    assert fitted.dead_letter is not None
    assert fitted.dead_letter["payload"] == b""
    assert f"payload of {LIMIT} bytes withheld" in fitted.dead_letter["detail"]
    assert "sha256 " in fitted.dead_letter["detail"]


def test_a_heavy_record_that_is_never_replayed_is_not_copied_into_its_dead_letter() -> None:
    # Before: a 10 MB unreadable value was sealed, encoded and produced again to
    # the DLQ, on the event loop, stalling every other partner's requests.
    import hashlib

    from pipeline.errors import SchemaError, UpstreamExhausted
    from pipeline.records import HEAVY_BYTES

    value = b"\x07" * (HEAVY_BYTES + 1)
    record = SourceRecord("claude.requests.acme", 0, 9, b"r1", value, [])
    dead = BUILDER.failure(
        record, SchemaError("unknown schema fingerprint"), partner_id="acme", request_id=None
    ).dead_letter
    assert dead is not None
    assert dead["payload"] == b""
    assert dead["payload_bytes"] == len(value)
    assert dead["payload_sha256"] == hashlib.sha256(value).hexdigest()
    assert "kept only at its source offset: schema_error is never replayed" in dead["detail"]
    assert (dead["source_topic"], dead["source_partition"], dead["source_offset"]) == (
        "claude.requests.acme",
        0,
        9,
    )
    # A replayable failure keeps its payload, however large: replay needs it.
    kept = BUILDER.failure(
        record, UpstreamExhausted("529 x5"), partner_id="acme", request_id="r1"
    ).dead_letter
    assert kept is not None
    assert kept["payload"] == value
    assert kept["payload_bytes"] is None


def test_the_usage_record_shows_thinking_speed_region_and_every_server_tool_counter() -> None:
    job = _job()
    usage = {"input_tokens": 10, "output_tokens": 300, "speed": "fast", "inference_geo": "eu",
             "output_tokens_details": {"thinking_tokens": 120},
             "server_tool_use": {"web_search_requests": 2, "web_fetch_requests": 1,
                                 "code_execution_requests": 3}}  # fmt: skip
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
               "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
               "stop_sequence": None, "usage": usage}  # fmt: skip
    usage_record = BUILDER.success(job, to_result(message, {}), 3).usage
    assert usage_record is not None
    record = CODEC.decode("UsageRecord", CODEC.encode("UsageRecord", usage_record))
    assert (record["thinking_tokens"], record["speed"], record["inference_geo"]) == (
        120, "fast", "eu",
    )  # fmt: skip
    assert (record["web_search_requests"], record["web_fetch_requests"]) == (2, 1)
    assert json.loads(record["server_tool_use_json"])["code_execution_requests"] == 3
    # what Claude did not say stays null; nonsense is not a count
    message["usage"] = {"input_tokens": 1, "output_tokens": 1,
                        "output_tokens_details": {"thinking_tokens": -5}, "speed": 3}  # fmt: skip
    bare = BUILDER.success(_job(), to_result(message, {}), 3).usage
    assert bare is not None
    assert (bare["thinking_tokens"], bare["speed"], bare["server_tool_use_json"]) == (
        None, None, None,
    )  # fmt: skip
