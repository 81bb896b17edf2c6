"""Bounds on a request's arrays, decided from the Avro bytes before decoding."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.client import build_request
from pipeline.errors import ConfigError, SchemaError
from pipeline.lifecycle import bounded
from pipeline.lifecycle.bounded import Bounds
from pipeline.schemas import Codec

CODEC = Codec()
TINY = Bounds(messages=5, array_items=3, items=12, nesting=16)


def _check(record: dict[str, Any], bounds: Bounds = TINY) -> Any:
    value = CODEC.encode("ClaudeRequest", record)
    writer, offset = CODEC.framing("ClaudeRequest", value)
    # as if the body were large: the walk runs whatever the size
    return bounded.check(writer, value, offset, bounds)


def _request(**kw: Any) -> dict[str, Any]:
    return build_request("acme", "hi", request_id="r1", **kw)


@pytest.fixture(autouse=True)
def _always_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bounded, "SMALL_BYTES", 0)


def test_within_bounds_is_none() -> None:
    assert _check(_request()) is None


def test_too_many_messages_is_refused_naming_the_bound_and_the_request() -> None:
    record = _request()
    record["messages"] = [{"role": "user", "content": "x"}] * 6
    summary, error = _check(record)
    assert summary == {"request_id": "r1", "partner_id": "acme", "model": "claude-haiku-4-5"}
    assert error.reason == "invalid_request"
    assert "messages: more than 5 items (PIPELINE_MAX_MESSAGES)" in error.detail


def test_any_other_array_and_every_map_are_bounded() -> None:
    _, error = _check(_request(stop_sequences=["a", "b", "c", "d"]))
    assert "stop_sequences: more than 3 items (PIPELINE_MAX_ARRAY_ITEMS)" in error.detail
    _, error = _check(_request(metadata={str(i): "v" for i in range(4)}))
    assert "metadata: more than 3 items" in error.detail


def test_all_items_together_are_bounded() -> None:
    record = _request(stop_sequences=["a", "b", "c"])
    record["messages"] = [{"role": "user", "content": "x"}] * 5
    record["metadata"] = {"a": "1", "b": "2", "c": "3"}
    assert _check(record, Bounds(messages=5, array_items=3, items=12)) is None
    _, error = _check(record, Bounds(messages=5, array_items=3, items=10))
    assert "more than 10 array items and map entries in all (PIPELINE_MAX_ITEMS)" in error.detail


def test_nesting_is_bounded() -> None:
    record = _request()
    record["messages"] = [{"role": "user", "content": [("claude.pipeline.TextBlock",
                          {"text": "x", "citations": None, "cache_control": None})]}]  # fmt: skip
    assert _check(record, Bounds(messages=5, array_items=3, items=12, nesting=2)) is None
    _, error = _check(record, Bounds(messages=5, array_items=3, items=12, nesting=1))
    assert "nested more than 1 deep (PIPELINE_MAX_NESTING)" in error.detail


def test_truncated_bytes_are_a_schema_error_not_a_crash() -> None:
    record = _request()
    record["messages"] = [{"role": "user", "content": "x"}] * 2
    value = CODEC.encode("ClaudeRequest", record)
    writer, offset = CODEC.framing("ClaudeRequest", value)
    with pytest.raises(SchemaError):
        bounded.check(writer, value[: len(value) - 8], offset, TINY)


def test_a_small_body_is_checked_once_decoded() -> None:
    with pytest.raises(Exception, match="messages: more than 1 items"):
        Bounds(messages=1).check_decoded({"messages": [1, 2]})


def test_bounds_come_from_the_environment_with_a_clear_error() -> None:
    assert Bounds.from_env({"PIPELINE_MAX_MESSAGES": "7"}).messages == 7
    with pytest.raises(ConfigError, match="PIPELINE_MAX_ITEMS must be a whole number"):
        Bounds.from_env({"PIPELINE_MAX_ITEMS": "lots"})
