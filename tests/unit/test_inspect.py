"""`inspect`: any pipeline topic's record as JSON, never a raw payload."""

from __future__ import annotations

import json

import pytest

from pipeline.client import build_request
from pipeline.errors import ConfigError
from pipeline.ops.dlq import inspect_record, record_partner, schema_of_topic
from pipeline.schemas import Codec

CODEC = Codec()


def test_each_topic_has_its_schema_and_others_are_refused() -> None:
    assert schema_of_topic("claude.requests.acme") == "ClaudeRequest"
    assert schema_of_topic("claude.responses.acme") == "ClaudeResponse"
    assert schema_of_topic("claude.dlq") == "DeadLetter"
    assert schema_of_topic("claude.pipeline.state") is None
    with pytest.raises(ConfigError, match="not a pipeline topic"):
        schema_of_topic("orders")


def test_a_request_decodes_and_a_corrupt_one_says_why() -> None:
    request = build_request("acme", "hello", max_tokens=8)
    value = CODEC.encode("ClaudeRequest", request)
    rec = inspect_record(CODEC, "claude.requests.acme", 1, 7, 1000, b"k", value)
    assert rec["value"]["request_id"] == request["request_id"]
    assert (rec["partition"], rec["offset"], rec["key"]) == (1, 7, "k")
    assert record_partner(rec) == "acme"
    bad = inspect_record(CODEC, "claude.requests.acme", 0, 8, None, None, value[:12])
    assert "corrupt ClaudeRequest" in bad["error"]
    assert "value" not in bad
    json.dumps(rec)


def test_state_records_are_json_and_name_their_partner() -> None:
    rec = inspect_record(CODEC, "claude.pipeline.state", 0, 0, None, b"served/acme|r1", b"[1, 2]")
    assert rec["value"] == [1, 2]
    assert record_partner(rec) == "acme"
    tomb = inspect_record(CODEC, "claude.pipeline.state", 0, 1, None, b"served/acme|r1", None)
    assert tomb["value"] is None
