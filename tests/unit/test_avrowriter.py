"""The compiled Avro writer writes exactly fastavro's bytes, or leaves the record
to fastavro: random records of every schema version, and the shapes it must not
decide itself."""

from __future__ import annotations

import io
import random
from typing import Any

import fastavro
import pytest

from pipeline.avrowriter import Unsure, compile_writer
from pipeline.errors import SchemaError
from pipeline.schemas import Codec, SchemaStore

STORE = SchemaStore()
VERSIONS = [v for versions in STORE.versions.values() for v in versions]
STRINGS = ["", "a", "héllo", "日本語", "x" * 300, "emoji 🎉"]
INTS = [0, 1, -1, 63, 64, -64, -65, 127, 128, 2**31 - 1, -(2**31)]
LONGS = [*INTS, 2**31, 2**62, 2**63 - 1, -(2**63)]


def fastavro_bytes(parsed: Any, datum: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, datum)
    return buf.getvalue()


class Maker:
    """Random data for a parsed schema, in the shapes the pipeline builds."""

    def __init__(self, rng: random.Random, schema: Any) -> None:
        self.rng = rng
        self.named: dict[str, Any] = {}
        self.collect(schema)

    def collect(self, schema: Any) -> None:
        if isinstance(schema, list):
            for branch in schema:
                self.collect(branch)
        elif isinstance(schema, dict):
            if schema["type"] in ("record", "enum", "fixed"):
                self.named[schema["name"]] = schema
            for field in schema.get("fields", []):
                self.collect(field["type"])
            for key in ("items", "values"):
                if key in schema:
                    self.collect(schema[key])

    def datum(self, schema: Any, depth: int = 0) -> Any:
        rng = self.rng
        if isinstance(schema, list):
            return self.union(schema, depth)
        if isinstance(schema, str):
            if schema in self.named:
                return self.datum(self.named[schema], depth)
            return self.primitive(schema)
        kind = schema["type"]
        if kind == "record":
            self.named[schema["name"]] = schema
            out = {}
            for field in schema["fields"]:
                if "default" in field and rng.random() < 0.2:
                    continue  # left to its default
                out[field["name"]] = self.datum(field["type"], depth + 1)
            return out
        if kind == "enum":
            self.named[schema["name"]] = schema
            return rng.choice(schema["symbols"])
        if kind == "array":
            n = 0 if depth > 4 else rng.choice([0, 1, 2, 5])
            return [self.datum(schema["items"], depth + 1) for _ in range(n)]
        if kind == "map":
            n = 0 if depth > 4 else rng.choice([0, 1, 3])
            return {
                rng.choice(STRINGS) + str(i): self.datum(schema["values"], depth + 1)
                for i in range(n)
            }
        return self.primitive(kind)

    def union(self, branches: list[Any], depth: int) -> Any:
        branch = self.rng.choice(branches)
        if branch == "null":
            return None
        value = self.datum(branch, depth + 1)
        name = branch if isinstance(branch, str) else branch.get("name", branch["type"])
        named = name in self.named and self.named[name]["type"] == "record"
        if named and sum(1 for b in branches if b != "null") > 1:
            return (name, value)  # tuple notation, as the pipeline writes blocks
        return value

    def primitive(self, kind: str) -> Any:
        rng = self.rng
        return {
            "null": None,
            "boolean": rng.random() < 0.5,
            "int": rng.choice(INTS),
            "long": rng.choice(LONGS),
            "double": rng.choice([0.0, -1.5, 1e300, 3.14159]),
            "float": rng.choice([0.0, 0.5, -2.25]),
            "bytes": rng.choice([b"", b"\x00\xff", bytes(range(200))]),
            "string": rng.choice(STRINGS),
        }[kind]


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.source.split("schemas/")[-1])
def test_random_records_get_fastavros_bytes(version: Any) -> None:
    encode = compile_writer(version.parsed)
    assert encode is not None
    rng = random.Random(version.source)
    written = 0
    for _ in range(150):
        datum = Maker(rng, version.parsed).datum(version.parsed)
        expected = fastavro_bytes(version.parsed, datum)
        try:
            got = encode(datum)
        except Unsure:
            continue
        assert got == expected
        written += 1
    assert written >= 140  # the shapes the pipeline builds are written, not handed on


def response() -> dict[str, Any]:
    return {
        "request_id": "r-1",
        "partner_id": "acme",
        "status": "ok",
        "model": "claude-sonnet-4-5",
        "content": "hi",
        "usage": {"input_tokens": 3, "output_tokens": 5},
        "attempts": 1,
        "latency_ms": 210,
        "completed_at_ms": 1_700_000_000_000,
        "blocks": [("claude.pipeline.TextBlock", {"text": "hi", "citations": None})],
        "cached": False,
    }


@pytest.mark.parametrize(
    "change",
    [
        {"attempts": True},  # bool for an int: fastavro writes it as 1
        {"attempts": 2**31},  # out of an int's range
        {"latency_ms": 2**64},  # out of a long's range
        {"attempts": 1.0},
        {"model": b"bytes"},
        {"status": "unknown"},  # not a symbol
        {"blocks": [("claude.pipeline.NoSuchBlock", {})]},
        {"blocks": [("a", "b", "c")]},
        {"blocks": [{"text": "untagged dict in a union of records"}]},
        {"usage": {"input_tokens": 1, "cache_creation": {"-type": "x"}}},
        {"content": "\ud800"},  # a lone surrogate: not UTF-8
        {"cached": 1},
        {"request_id": None},  # required, not nullable
    ],
)
def test_what_it_does_not_decide_goes_to_fastavro(change: dict[str, Any]) -> None:
    version = STORE.current["ClaudeResponse"]
    encode = compile_writer(version.parsed)
    assert encode is not None
    assert encode(response())  # the unchanged record is written
    datum = {**response(), **change}
    with pytest.raises(Unsure):
        encode(datum)
    # and the codec gives fastavro's answer: its bytes, or its error as a SchemaError
    codec = Codec(STORE)
    try:
        expected = fastavro_bytes(version.parsed, datum)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        with pytest.raises(SchemaError, match="cannot encode ClaudeResponse"):
            codec.encode("ClaudeResponse", datum)
    else:
        assert codec.encode("ClaudeResponse", datum)[10:] == expected


def test_missing_fields_take_their_defaults_and_a_missing_required_one_is_refused() -> None:
    version = STORE.current["ClaudeResponse"]
    encode = compile_writer(version.parsed)
    assert encode is not None
    datum = response()
    del datum["model"]  # nullable, default null
    assert encode(datum) == fastavro_bytes(version.parsed, datum)
    del datum["request_id"]
    with pytest.raises(Unsure):
        encode(datum)
    with pytest.raises(SchemaError, match="request_id"):
        Codec(STORE).encode("ClaudeResponse", datum)


def test_doubles_take_ints_as_fastavro_does() -> None:
    schema = fastavro.parse_schema(
        {"type": "record", "name": "R", "fields": [{"name": "x", "type": "double"}]}
    )
    encode = compile_writer(schema)
    assert encode is not None
    assert (
        encode({"x": 3}) == fastavro_bytes(schema, {"x": 3}) == fastavro_bytes(schema, {"x": 3.0})
    )


def test_a_recursive_schema_compiles() -> None:
    schema = fastavro.parse_schema(
        {
            "type": "record",
            "name": "Node",
            "fields": [
                {"name": "v", "type": "long"},
                {"name": "next", "type": ["null", "Node"], "default": None},
            ],
        }
    )
    encode = compile_writer(schema)
    assert encode is not None
    datum = {"v": 1, "next": {"v": -2, "next": {"v": 300, "next": None}}}
    assert encode(datum) == fastavro_bytes(schema, datum)


@pytest.mark.parametrize(
    ("union", "datum"),
    [
        # fastavro takes bytes as an array (any Sequence but str) before bytes
        ([{"type": "array", "items": "int"}, "bytes"], b"\x01"),
        # a date branch takes a string (a date), before the string branch
        ([{"type": "int", "logicalType": "date"}, "string"], "2026-12-07"),
        # tuple notation for a non-record branch: fastavro's rules
        (["null", "string", "long"], ("string", "x")),
        # a record named by fastavro's "-type" key
        (["null", {"type": "record", "name": "R", "fields": []}], {"-type": "R"}),
    ],
)
def test_unions_fastavro_decides_by_rules_of_its_own_are_left_to_it(
    union: list[Any], datum: Any
) -> None:
    schema = fastavro.parse_schema(
        {"type": "record", "name": "U", "fields": [{"name": "u", "type": union}]}
    )
    encode = compile_writer(schema)
    assert encode is not None
    with pytest.raises(Unsure):
        encode({"u": datum})
