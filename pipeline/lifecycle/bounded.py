"""Bounds on what a request holds: its arrays and maps, checked over its Avro
bytes before anything is materialised, and its timestamps (`check_times`).

fastavro builds the whole value before anyone can count it: ten million empty
messages (3 bytes each, 30 MB, within the record limit) took the examiner 34 s
and 4 GB, and the worker 2.2 GB and 3 s under the GIL to take the result back.
This walk reads the block headers Avro puts before every array and map and
stops at the first one past a bound, so such a record costs a few bytes of
reading and is refused as `invalid_request` naming the bound. Strings and
bytes are skipped by their length, never copied.

Pure, like `intake.examine_value`, which runs it first (in the examiner
process for heavy records).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigError, InvalidRequest, SchemaError, TooLarge


@dataclass(frozen=True)
class Bounds:
    """What one request may hold. The defaults are at or below what Claude's
    Messages API accepts (100,000 messages per request); a bound is named in the
    refusal and set with the environment variable beside it."""

    #: messages per request (PIPELINE_MAX_MESSAGES; the API's own limit)
    messages: int = 100_000
    #: items of any other one array or map: content blocks of a message, tools,
    #: stop sequences, metadata entries, citations (PIPELINE_MAX_ARRAY_ITEMS)
    array_items: int = 100_000
    #: items of every array and map of the request together (PIPELINE_MAX_ITEMS)
    items: int = 250_000
    #: arrays within arrays (PIPELINE_MAX_NESTING; the schema nests 4 deep)
    nesting: int = 16

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Bounds:
        env = os.environ if env is None else env
        values: dict[str, int] = {}
        for name, var in _ENV.items():
            text = env.get(var)
            if text:
                try:
                    values[name] = int(text)
                except ValueError:
                    raise ConfigError(f"{var} must be a whole number, not {text!r}") from None
        return cls(**values)

    def fast(self, body_bytes: int) -> bool:
        """True when a body this short needs no walk: every array item and map
        entry of the request's schema takes at least one byte (and its nesting is
        fixed by the schema), so it holds at most that many items, and fastavro
        decodes it in a few milliseconds. (Bounds below that size are checked on
        the decoded request: `check_decoded`.)"""
        return body_bytes <= max(SMALL_BYTES, min(self.messages, self.array_items, self.items))

    def check_decoded(self, request: Mapping[str, Any]) -> None:
        """The bounds on a decoded request's own arrays (for bodies `fast` let by)."""
        for field, limit, var in (
            ("messages", self.messages, "PIPELINE_MAX_MESSAGES"),
            ("tools", self.array_items, "PIPELINE_MAX_ARRAY_ITEMS"),
            ("stop_sequences", self.array_items, "PIPELINE_MAX_ARRAY_ITEMS"),
            ("metadata", self.array_items, "PIPELINE_MAX_ARRAY_ITEMS"),
        ):
            value = request.get(field)
            if value is not None and len(value) > limit:
                raise TooLarge(
                    f"the request is too large: {field}: more than {limit:,} items ({var})"
                )


#: Bodies up to this size are decoded without a walk (the intake's in-loop size).
SMALL_BYTES = 256 * 1024


_ENV = {
    "messages": "PIPELINE_MAX_MESSAGES",
    "array_items": "PIPELINE_MAX_ARRAY_ITEMS",
    "items": "PIPELINE_MAX_ITEMS",
    "nesting": "PIPELINE_MAX_NESTING",
}

#: How far a request's own timestamps may stray from the worker's clock. They
#: travel into every output record (latency_ms, an Avro long): outside these
#: bounds a value is a bug or an attack, never a request (a dead letter replayed
#: within a year keeps its original created_at_ms).
MAX_REQUEST_AGE_MS = 366 * 24 * 3600 * 1000
MAX_FUTURE_MS = 5 * 60 * 1000


def check_times(request: Mapping[str, Any], now: float) -> None:
    """created_at_ms and deadline_ms within plausible bounds of `now`."""
    now_ms = int(now * 1000)
    created = request.get("created_at_ms")
    if not isinstance(created, int) or not (
        now_ms - MAX_REQUEST_AGE_MS <= created <= now_ms + MAX_FUTURE_MS
    ):
        raise InvalidRequest(
            "created_at_ms: not a time within a year before the worker's clock "
            f"({now_ms} ms) and {MAX_FUTURE_MS // 1000} s after it"
        )
    deadline = request.get("deadline_ms")
    if deadline is not None and not 0 <= deadline <= now_ms + MAX_REQUEST_AGE_MS:
        raise InvalidRequest("deadline_ms: not a time within a year of the worker's clock")


#: Top-level fields a refusal may name the request by, read as the walk passes them.
_SUMMARY = ("request_id", "partner_id", "model")


class _Past(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _collect(schema: Any, names: dict[str, Any]) -> None:
    """Every named type a parsed schema defines (later uses are only its name)."""
    if isinstance(schema, list):
        for branch in schema:
            _collect(branch, names)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed") and "name" in schema:
            if schema["name"] in names:
                return
            names[schema["name"]] = schema
        for f in schema.get("fields") or ():
            _collect(f["type"], names)
        for key in ("items", "values"):
            if key in schema:
                _collect(schema[key], names)
        if isinstance(kind, dict | list):
            _collect(kind, names)


_NAMES: dict[int, dict[str, Any]] = {}


def _names(schema: Any) -> dict[str, Any]:
    found = _NAMES.get(id(schema))
    if found is None:
        found = {}
        _collect(schema, found)
        if len(_NAMES) > 64:
            _NAMES.clear()
        _NAMES[id(schema)] = found
    return found


class _Walk:
    def __init__(self, data: bytes, offset: int, bounds: Bounds, names: dict[str, Any]) -> None:
        self.data = memoryview(data)
        self.pos = offset
        self.bounds = bounds
        self.items = 0
        self.depth = 0
        self.names = names
        self.summary: dict[str, Any] = {}

    # -- primitives ----------------------------------------------------------

    def long(self) -> int:
        data, pos = self.data, self.pos
        shift = result = 0
        while True:
            if pos >= len(data):
                raise SchemaError("corrupt ClaudeRequest: truncated")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 63:
                raise SchemaError("corrupt ClaudeRequest: a varint longer than a long")
        self.pos = pos
        return (result >> 1) ^ -(result & 1)

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise SchemaError("corrupt ClaudeRequest: a length past the end")
        self.pos += n

    def string(self) -> str | None:
        n = self.long()
        start = self.pos
        self.skip(n)
        if n > 1024:
            return None
        try:
            return bytes(self.data[start : self.pos]).decode("utf-8")
        except UnicodeDecodeError:
            return None

    # -- schemas -------------------------------------------------------------

    def resolve(self, schema: Any) -> Any:
        if isinstance(schema, str):
            return self.names.get(schema, schema)
        if isinstance(schema, dict) and isinstance(schema.get("type"), dict | list):
            return self.resolve(schema["type"])
        return schema

    def value(self, schema: Any, field: str) -> None:
        schema = self.resolve(schema)
        if isinstance(schema, list):  # a union
            index = self.long()
            if not 0 <= index < len(schema):
                raise SchemaError("corrupt ClaudeRequest: a union branch out of range")
            self.value(schema[index], field)
            return
        kind = schema["type"] if isinstance(schema, dict) else schema
        if kind == "null":
            return
        if kind == "boolean":
            self.skip(1)
        elif kind in ("int", "long", "enum"):
            self.long()
        elif kind == "float":
            self.skip(4)
        elif kind == "double":
            self.skip(8)
        elif kind in ("string", "bytes"):
            self.skip(self.long())
        elif kind == "fixed":
            self.skip(int(schema["size"]))
        elif kind in ("record", "error"):
            for f in schema["fields"]:
                self.value(f["type"], f["name"])
        elif kind == "array":
            self.repeated(schema["items"], field, is_map=False)
        elif kind == "map":
            self.repeated(schema["values"], field, is_map=True)
        else:
            raise SchemaError(f"corrupt ClaudeRequest: an unknown type {kind!r}")

    def repeated(self, item: Any, field: str, *, is_map: bool) -> None:
        bounds = self.bounds
        limit = bounds.messages if field == "messages" and self.depth == 0 else bounds.array_items
        self.depth += 1
        if self.depth > bounds.nesting:
            raise _Past(f"arrays nested more than {bounds.nesting} deep (PIPELINE_MAX_NESTING)")
        count = 0
        while True:
            block = self.long()
            if block == 0:
                break
            if block < 0:
                block = -block
                self.long()  # the block's size in bytes
            count += block
            self.items += block
            # decided at the block header, before one of its items is read
            if count > limit:
                what = "messages" if limit == bounds.messages and field == "messages" else field
                var = "PIPELINE_MAX_MESSAGES" if what == "messages" else "PIPELINE_MAX_ARRAY_ITEMS"
                raise _Past(f"{what}: more than {limit:,} items ({var})")
            if self.items > bounds.items:
                raise _Past(
                    f"more than {bounds.items:,} array items and map entries in all "
                    "(PIPELINE_MAX_ITEMS)"
                )
            for _ in range(block):
                if is_map:
                    self.skip(self.long())
                self.value(item, field)
        self.depth -= 1

    def request(self, schema: Any) -> None:
        schema = self.resolve(schema)
        for f in schema["fields"]:
            name = f["name"]
            if name in _SUMMARY and _is_string(f["type"]):
                self.summary[name] = self.string()
            else:
                self.value(f["type"], name)


def _is_string(schema: Any) -> bool:
    return schema == "string" or (isinstance(schema, dict) and schema.get("type") == "string")


def check(
    writer_schema: Any, data: bytes, offset: int, bounds: Bounds
) -> tuple[dict[str, Any], TooLarge] | None:
    """None when the request at `data[offset:]` is within `bounds`; else what the
    refusal can name it by (request_id, partner_id, model: whichever the walk
    passed) and the TooLarge refusal naming the bound. SchemaError when the bytes
    are not a request at all (so fastavro is never asked to read them)."""
    if bounds.fast(len(data) - offset):
        return None
    walk = _Walk(data, offset, bounds, _names(writer_schema))
    try:
        walk.request(writer_schema)
    except _Past as exc:
        summary = {k: v for k, v in walk.summary.items() if v is not None}
        return summary, TooLarge(f"the request is too large: {exc.detail}")
    except RecursionError:
        raise SchemaError("corrupt ClaudeRequest: nested too deeply") from None
    return None


@functools.cache
def default_bounds() -> Bounds:
    """The bounds this process runs with (the examiner process inherits them)."""
    return Bounds.from_env()
