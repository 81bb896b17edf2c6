from __future__ import annotations

import io
import struct
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

from pipeline.client import build_request
from pipeline.errors import SchemaError
from pipeline.schemas import SINGLE_OBJECT_MAGIC, Codec, SchemaStore, SchemaVersion

STORE = SchemaStore()


def test_every_contract_record_has_a_current_and_a_v1_schema() -> None:
    for name in ("ClaudeRequest", "ClaudeResponse", "UsageRecord", "DeadLetter", "PartnerConfig"):
        versions = STORE.versions[name]
        assert len(versions) >= 2, name
        assert versions[-1] is STORE.current[name]
        assert STORE.current[name].parsed["name"] == f"claude.pipeline.{name}"


def test_contract_fields_are_present() -> None:
    fields = {f["name"] for f in STORE.current["ClaudeRequest"].parsed["fields"]}
    assert {
        "request_id", "partner_id", "model", "max_tokens", "messages", "system", "temperature",
        "stop_sequences", "metadata", "priority", "deadline_ms", "created_at_ms",
    } <= fields  # fmt: skip
    reasons = next(
        f for f in STORE.current["DeadLetter"].parsed["fields"] if f["name"] == "reason"
    )["type"]["symbols"]
    assert reasons == [
        "schema_error", "auth_failed", "unknown_partner", "partner_disabled", "quota_exceeded",
        "invalid_request", "upstream_rejected", "upstream_exhausted", "deadline_expired",
        "duplicate", "internal_error",
    ]  # fmt: skip


def test_single_object_encoding_layout() -> None:
    codec = Codec(STORE)
    data = codec.encode("ClaudeRequest", build_request("acme", "hi", request_id="r1"))
    assert data[:2] == SINGLE_OBJECT_MAGIC
    pcf = to_parsing_canonical_form(STORE.current["ClaudeRequest"].parsed)
    assert data[2:10] == bytes.fromhex(fingerprint(pcf, "CRC-64-AVRO"))
    assert codec.decode("ClaudeRequest", data)["request_id"] == "r1"


def test_round_trip_of_every_record() -> None:
    codec = Codec(STORE)
    request = build_request("acme", "hello", request_id="r1", system="sys", temperature=0.5)
    assert codec.decode("ClaudeRequest", codec.encode("ClaudeRequest", request)) == request
    dead = {
        "partner_id": None, "request_id": None, "reason": "schema_error", "detail": "x",
        "source_topic": "t", "source_partition": 1, "source_offset": 2, "payload": b"\x00\xff",
        "headers": {"x-signature": b"ab"}, "attempts": 0, "failed_at_ms": 5, "replay_count": 0,
        "source_key": None, "error_type": None, "payload_bytes": None, "payload_sha256": None,
    }  # fmt: skip
    assert codec.decode("DeadLetter", codec.encode("DeadLetter", dead)) == dead


def _write_with(schema: SchemaVersion, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema.parsed, record)
    return SINGLE_OBJECT_MAGIC + schema.fingerprint + buf.getvalue()


def test_old_writer_new_reader_fills_defaults() -> None:
    v1 = STORE.versions["ClaudeRequest"][0]
    assert v1.source.endswith("v1/ClaudeRequest.avsc")
    old = build_request("acme", "from an old client", request_id="old-1")
    del old["top_p"], old["top_k"]
    decoded = Codec(STORE).decode("ClaudeRequest", _write_with(v1, old))
    assert decoded["request_id"] == "old-1"
    assert decoded["top_p"] is None
    assert decoded["top_k"] is None


def test_new_writer_old_reader_ignores_new_fields() -> None:
    v1 = STORE.versions["ClaudeResponse"][0]
    current = Codec(STORE).encode(
        "ClaudeResponse",
        {
            "request_id": "r", "partner_id": "p", "status": "ok", "model": "m", "content": "c",
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 2, "cache_read_input_tokens": 0,
                      "cache_creation_input_tokens": 0},
            "error_type": None, "error_message": None, "attempts": 1, "latency_ms": 3,
            "completed_at_ms": 4, "upstream_request_id": "req_1",
        },
    )  # fmt: skip
    writer = STORE.by_fingerprint[current[2:10]]
    old_view = fastavro.schemaless_reader(io.BytesIO(current[10:]), writer.parsed, v1.parsed)
    assert isinstance(old_view, dict)
    assert old_view["content"] == "c"
    assert "upstream_request_id" not in old_view


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "not Avro"),
        (b"garbage bytes", "not Avro"),
        (SINGLE_OBJECT_MAGIC + b"\x00" * 8 + b"body", "unknown schema fingerprint"),
    ],
)
def test_undecodable_values_raise_schema_error(data: bytes, fragment: str) -> None:
    with pytest.raises(SchemaError, match=fragment):
        Codec(STORE).decode("ClaudeRequest", data)


def test_wrong_record_type_and_truncated_body() -> None:
    codec = Codec(STORE)
    usage = codec.encode(
        "PartnerConfig",
        {"partner_id": "p", "signing_secret_ref": "env:X", "enabled": True, "weight": 1,
         "rpm": None, "tpm": None, "daily_token_budget": None, "monthly_budget_usd": None,
         "allowed_models": [], "max_tokens_cap": None, "api_key_ref": None},
    )  # fmt: skip
    with pytest.raises(SchemaError, match="expected a ClaudeRequest"):
        codec.decode("ClaudeRequest", usage)
    good = codec.encode("ClaudeRequest", build_request("a", "b"))
    with pytest.raises(SchemaError, match="corrupt"):
        codec.decode("ClaudeRequest", good[:14])


def test_encoding_an_invalid_record_is_a_schema_error() -> None:
    with pytest.raises(SchemaError):
        Codec(STORE).encode("ClaudeRequest", {"request_id": "only this"})


class FakeRegistry:
    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.subjects: dict[tuple[str, str], int] = {}

    def id_for(self, subject: str, schema_text: str) -> int:
        key = (subject, schema_text)
        if key not in self.subjects:
            self.subjects[key] = len(self.schemas) + 1
            self.schemas[self.subjects[key]] = schema_text
        return self.subjects[key]

    def schema_for(self, schema_id: int) -> str:
        return self.schemas[schema_id]


def test_confluent_framing_with_a_registry() -> None:
    registry = FakeRegistry()
    codec = Codec(STORE, registry)
    data = codec.encode("ClaudeRequest", build_request("acme", "x", request_id="c1"), "topic-a")
    assert data[0] == 0
    schema_id = struct.unpack(">I", data[1:5])[0]
    assert registry.subjects[("topic-a-value", STORE.current["ClaudeRequest"].text)] == schema_id
    assert codec.decode("ClaudeRequest", data)["request_id"] == "c1"
    # and the reader without a registry still reads single-object records
    plain = Codec(STORE).encode("ClaudeRequest", build_request("acme", "y", request_id="s1"))
    assert codec.decode("ClaudeRequest", plain)["request_id"] == "s1"


def test_confluent_framed_record_without_registry_is_refused() -> None:
    data = Codec(STORE, FakeRegistry()).encode("ClaudeRequest", build_request("a", "b"), "t")
    with pytest.raises(SchemaError, match="no registry"):
        Codec(STORE).decode("ClaudeRequest", data)
