"""Poison: records no worker may choke on, each with the dead letter it must end as.

Every kind is a way a buggy or hostile producer can write to a partner's request
topic: broken framing, broken Avro, broken or forged envelopes, values that decode
but can never be a valid request, and requests only Claude can refuse. The
integration tests send them interleaved with good traffic and check each ends as
exactly one dead letter with `reason` and a detail naming the problem, while the
good traffic is served; the `poison` benchmark compares the good traffic's p99
with a clean run.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fastavro

from pipeline.client import build_request, request_record
from pipeline.messages import NS
from pipeline.schemas import SINGLE_OBJECT_MAGIC, Codec
from pipeline.security.signing import (
    H_PARTNER,
    H_SIGNATURE,
    H_TIMESTAMP,
    replay_headers,
    sign,
    signed_headers,
)

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Poison:
    kind: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    reason: str  # the dead letter's reason
    fragment: str  # a piece of its detail that names the problem
    #: The request_id its dead letter carries ("": none can be read; find it by key).
    request_id: str
    #: Whether the partner gets an error response (not for a copy that may be
    #: a genuine request's: the original answers).
    responds: bool = True


def corpus(partner: str, secret: bytes, codec: Codec) -> list[Poison]:
    """At least thirty kinds of bad record for `partner` (signed with `secret`)."""
    out: list[Poison] = []

    def rid() -> str:
        return f"poison-{uuid.uuid4()}"

    def add(
        kind: str,
        value: bytes | None,
        reason: str,
        fragment: str,
        *,
        key: bytes | str | None = "id",
        request_id: str | None = None,
        headers: Headers | None = None,
        responds: bool = True,
    ) -> None:
        request_id = request_id if request_id is not None else rid()
        record_key = request_id.encode("utf-8", "surrogatepass") if key == "id" else key
        assert not isinstance(record_key, str)  # noqa: S101 ("id" handled above)
        signed = headers if headers is not None else _sign(partner, secret, value or b"")
        out.append(Poison(kind, record_key, value, signed, reason, fragment, request_id, responds))

    def encoded(rec: dict[str, Any]) -> bytes:
        return codec.encode("ClaudeRequest", rec)

    def request(mutate: Callable[[dict[str, Any]], Any] | None = None, **kw: Any) -> dict[str, Any]:
        rec = build_request(partner, "a poison request", request_id=rid(), max_tokens=32, **kw)
        if mutate is not None:
            mutate(rec)
        return rec

    good = request()
    body = encoded(good)
    # -- framing and Avro
    add("truncated Avro", body[: len(body) // 2], "schema_error", "corrupt ClaudeRequest")
    add("unknown fingerprint", SINGLE_OBJECT_MAGIC + b"\x01" * 8 + body[10:], "schema_error",
        "unknown schema fingerprint")  # fmt: skip
    add("empty value", b"", "schema_error", "not Avro")
    add("not Avro at all", b"\xff" * 64, "schema_error", "not Avro")
    add("Confluent framing, no registry", b"\x00\x00\x00\x00\x07" + body[10:], "schema_error",
        "no registry")  # fmt: skip
    add("a response where a request belongs",
        codec.encode("ClaudeResponse", _response(partner)), "schema_error",
        "expected a ClaudeRequest, got a ClaudeResponse")  # fmt: skip
    add(
        "invalid UTF-8 in a string", _bad_utf8(codec, good), "schema_error", "corrupt ClaudeRequest"
    )
    add("a 10 MB value", SINGLE_OBJECT_MAGIC + b"\x00" * (10 * 1024 * 1024), "schema_error",
        "unknown schema fingerprint")  # fmt: skip
    # -- the envelope: headers, signature, identity
    ts = str(int(time.time())).encode()
    add("no headers", body, "auth_failed", "missing header x-partner-id", headers=[])
    add("no signature", body, "auth_failed", "missing header x-signature",
        headers=[(H_PARTNER, partner.encode()), (H_TIMESTAMP, ts)])  # fmt: skip
    add("signature twice", body, "auth_failed", "x-signature appears more than once",
        headers=[*_sign(partner, secret, body), (H_SIGNATURE, b"0" * 64)])  # fmt: skip
    add("oversized headers", body, "auth_failed", "exceed the 16384-byte limit",
        headers=[*_sign(partner, secret, body), ("x-padding", b"p" * 20_000)])  # fmt: skip
    add("upper-case signature", body, "auth_failed", "signature mismatch",
        headers=[(k, v.upper() if k == H_SIGNATURE else v) for k, v in _sign(partner, secret, body)])  # fmt: skip
    add("non-numeric timestamp", body, "auth_failed", "signature mismatch",
        headers=_with(_sign(partner, secret, body), H_TIMESTAMP, b"yesterday"))  # fmt: skip
    stale = int(time.time()) - 3600
    add("stale signature", body, "auth_failed", "stale signature",
        headers=_signed_at(partner, secret, body, stale))  # fmt: skip
    future = int(time.time()) + 3600
    add("timestamp in the future", body, "auth_failed", "in the future",
        headers=_signed_at(partner, secret, body, future))  # fmt: skip
    add("signed with another secret", body, "auth_failed", "signature mismatch",
        headers=_sign(partner, b"not the secret", body))  # fmt: skip
    add("header names another partner", body, "auth_failed", "does not match the topic",
        headers=_with(_sign(partner, secret, body), H_PARTNER, b"someone-else"))  # fmt: skip
    other = request(lambda r: r.update(partner_id="someone-else"))
    add("value names another partner", encoded(other), "auth_failed",
        "in the value does not match", request_id=other["request_id"])  # fmt: skip
    # A signed record under the wrong key, with no copy at home: a producer's
    # mistake, and its partner is told (pipeline/kafka/homes.py); a moved replay is not.
    moved = request()
    add("key is not the request_id", encoded(moved), "auth_failed",
        "the record key must be the request_id", key=b"another-key",
        request_id=moved["request_id"])  # fmt: skip
    keyless = request()
    add("no key", encoded(keyless), "auth_failed", "the record key must be the request_id",
        key=None, request_id=keyless["request_id"])  # fmt: skip
    # -- decodes, but is no valid request
    for kind, mutate, fragment in (
        ("max_tokens negative", lambda r: r.update(max_tokens=-5), "max_tokens must be >= 0"),
        ("empty messages", lambda r: r.update(messages=[]), "messages is empty"),
        ("assistant first",
         lambda r: r.update(messages=[{"role": "assistant", "content": "hi"}]),
         "the first message must have role user"),
        ("empty content", lambda r: r["messages"][0].update(content=""), "content is empty"),
        ("temperature 5", lambda r: r.update(temperature=5.0), "temperature must be within"),
        ("governed key in extra params",
         lambda r: r.update(extra_params_json='{"max_tokens": 99999}'),
         "extra_params_json.max_tokens"),
        ("extra params not JSON", lambda r: r.update(extra_params_json="{nope"), "invalid JSON"),
        ("deeply nested JSON",
         lambda r: r.update(extra_params_json="[" * 500 + "]" * 500), "nested deeper"),
        ("NUL in request_id", lambda r: r.update(request_id="nul\x00id"), "control characters"),
        ("deadline passed", lambda r: r.update(deadline_ms=1), "deadline passed"),
    ):  # fmt: skip
        rec = request(mutate)
        reason = "deadline_expired" if kind == "deadline passed" else "invalid_request"
        add(kind, encoded(rec), reason, fragment, request_id=rec["request_id"])
    long_id = "x" * 300
    add("request_id too long", encoded(request(lambda r: r.update(request_id=long_id))),
        "auth_failed", "a record key of 300 bytes", key=long_id.encode(), request_id="")  # fmt: skip
    tool = request_record(
        {"model": "claude-haiku-4-5", "max_tokens": 32, "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "t", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]},
        ]},
        partner_id=partner, request_id=rid(),
    )  # fmt: skip
    name, block = tool["messages"][1]["content"][0]
    tool["messages"][1]["content"][0] = (name, {**block, "input_json": "{'single': quotes}"})
    add("invalid JSON in a tool input", encoded(tool), "invalid_request", "input: invalid JSON",
        request_id=tool["request_id"])  # fmt: skip
    other_block = request()
    other_block["messages"][0]["content"] = [(NS + "OtherBlock", {"type": "x", "json": "[1,"})]
    add("unknown block not JSON", encoded(other_block), "invalid_request", "invalid JSON",
        request_id=other_block["request_id"])  # fmt: skip
    # -- issue 23: signed records that once stopped the worker or cost everyone
    ancient = request(lambda r: r.update(created_at_ms=-(2**62)))
    add("created before time began", encoded(ancient), "invalid_request", "created_at_ms",
        request_id=ancient["request_id"])  # fmt: skip
    replayed = request()
    replayed_value = encoded(replayed)
    add("replay count of 10**30", replayed_value, "auth_failed", "malformed x-replay-count",
        request_id=replayed["request_id"],
        headers=replay_headers([], partner, secret, replayed_value, 10**30, time.time()))  # fmt: skip
    add("two hundred headers", body, "auth_failed", "headers: at most",
        headers=[*_sign(partner, secret, body), *((f"x-h{i}", b"") for i in range(200))])  # fmt: skip
    surrogate = request_record(
        {"model": "claude-haiku-4-5", "max_tokens": 32,
         "messages": [{"role": "user", "content": "q"}],
         "tools": [{"name": "t", "input_schema": {"type": "object"}}]},
        partner_id=partner, request_id=rid(),
    )  # fmt: skip
    tool_name, tool_fields = surrogate["tools"][0]
    surrogate["tools"] = [(tool_name, {**tool_fields, "input_schema_json": '{"x":"\\udfff"}'})]
    add("a lone surrogate in a tool schema", encoded(surrogate), "invalid_request", "surrogate",
        request_id=surrogate["request_id"])  # fmt: skip
    # -- only Claude can judge
    for kind, mutate, fragment in (
        ("unknown model", lambda r: r.update(model="claude-imaginary-9"), "model: claude-imaginary-9"),
        ("max_tokens huge", lambda r: r.update(max_tokens=2**31 - 1), "maximum allowed number of output tokens"),
        ("ten thousand messages",
         lambda r: r.update(messages=[{"role": "user", "content": "lorem ipsum dolor " * 8}] * 10_000),
         "prompt is too long"),
    ):  # fmt: skip
        rec = request(mutate)
        add(kind, encoded(rec), "upstream_rejected", fragment, request_id=rec["request_id"])
    return out


def _sign(partner: str, secret: bytes, value: bytes) -> Headers:
    return signed_headers(partner, secret, value)


def _signed_at(partner: str, secret: bytes, value: bytes, ts: int) -> Headers:
    return [
        (H_PARTNER, partner.encode()),
        (H_TIMESTAMP, str(ts).encode()),
        (H_SIGNATURE, sign(secret, ts, value).encode()),
    ]


def _with(headers: Headers, name: str, value: bytes) -> Headers:
    return [(k, value if k == name else v) for k, v in headers]


def _response(partner: str) -> dict[str, Any]:
    usage = {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0,
             "cache_creation_input_tokens": 0}  # fmt: skip
    return {"request_id": "r", "partner_id": partner, "status": "ok", "usage": usage,
            "attempts": 1, "latency_ms": 1, "completed_at_ms": 1}  # fmt: skip


def _bad_utf8(codec: Codec, record: dict[str, Any]) -> bytes:
    """The record with its model string's bytes replaced by invalid UTF-8."""
    version = codec.store.current["ClaudeRequest"]
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, version.parsed, {**record, "model": "AAAA"})
    return (
        SINGLE_OBJECT_MAGIC
        + version.fingerprint
        + buf.getvalue().replace(b"AAAA", b"\xff\xfe\xfd\xfc", 1)
    )


def summary(kinds: list[Poison]) -> str:
    return json.dumps({p.kind: p.reason for p in kinds}, indent=1)
