"""Outcomes that cannot be published as they are still end the request, never the worker."""

from __future__ import annotations

from typing import Any

from pipeline.claude import to_result
from pipeline.client import build_request
from pipeline.errors import AuthFailed
from pipeline.messages import fields_to_params
from pipeline.outcomes import OutcomeBuilder, fit, record_size
from pipeline.partners import DLQ_TOPIC, Partner
from pipeline.pricing import PriceTable
from pipeline.records import Admitted, Job, SourceRecord
from pipeline.schemas import Codec

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
