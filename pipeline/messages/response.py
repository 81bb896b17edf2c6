"""A Messages API response <-> the fields of a ClaudeResponse record."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.messages.params import Record, block_param, branch
from pipeline.messages.request import other_block, text_block_fields
from pipeline.messages.values import (
    NS,
    WireError,
    drop_nulls,
    dump_json,
    is_int,
    load_json,
    need,
    only,
)

# -- response: message -> record ---------------------------------------------------------

_RESPONSE_BLOCK_KEYS: dict[str, frozenset[str]] = {
    "text": frozenset({"type", "text", "citations"}),
    "thinking": frozenset({"type", "thinking", "signature"}),
    "redacted_thinking": frozenset({"type", "data"}),
    "tool_use": frozenset({"type", "id", "name", "input"}),
    "server_tool_use": frozenset({"type", "id", "name", "input"}),
}


def _response_block(block: Mapping[str, Any], path: str) -> tuple[str, dict[str, Any]]:
    kind = block.get("type")
    allowed = _RESPONSE_BLOCK_KEYS.get(str(kind))
    if allowed is None or not only(block, allowed):
        return other_block(block, path)
    try:
        if kind == "text":
            text = text_block_fields(block, path)
            return (NS + "TextBlock", text) if text is not None else other_block(block, path)
        if kind == "thinking":
            return NS + "ThinkingBlock", {
                "thinking": need(block, "thinking", str, path),
                "signature": need(block, "signature", str, path),
            }
        if kind == "redacted_thinking":
            return NS + "RedactedThinkingBlock", {"data": need(block, "data", str, path)}
        fields = {
            "id": need(block, "id", str, path),
            "name": need(block, "name", str, path),
            "input_json": dump_json(need(block, "input", dict, path), f"{path}.input"),
        }
    except WireError:
        return other_block(block, path)  # not the shape we type: keep it whole
    if kind == "tool_use":
        return NS + "ToolUseBlock", {**fields, "cache_control": None}
    return NS + "ServerToolUseBlock", fields


_USAGE_TYPED = frozenset(
    {
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "cache_creation",
        "server_tool_use",
        "service_tier",
    }
)
_MESSAGE_TYPED = frozenset(
    {"id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"}
)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _sub_record(value: object, keys: tuple[str, ...]) -> tuple[dict[str, int] | None, bool]:
    """(typed record, exact): exact is False when the value has keys or types we lack."""
    if value is None:
        return None, True
    if not isinstance(value, Mapping):
        return None, False
    typed = {k: _int(value.get(k)) for k in keys}
    exact = only(value, frozenset(keys)) and all(is_int(value.get(k)) for k in keys)
    return typed, exact


def usage_fields(usage: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(TokenUsage record, untyped usage keys) from a Messages API `usage` object."""
    cache_creation, cc_exact = _sub_record(
        usage.get("cache_creation"), ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")
    )
    server, st_exact = _sub_record(
        usage.get("server_tool_use"), ("web_search_requests", "web_fetch_requests")
    )
    tier = usage.get("service_tier")
    typed = {
        "input_tokens": _int(usage.get("input_tokens")),
        "output_tokens": _int(usage.get("output_tokens")),
        "cache_read_input_tokens": _int(usage.get("cache_read_input_tokens")),
        "cache_creation_input_tokens": _int(usage.get("cache_creation_input_tokens")),
        "cache_creation": cache_creation,
        "server_tool_use": server,
        "service_tier": tier if isinstance(tier, str) else None,
    }
    extra = {k: v for k, v in usage.items() if k not in _USAGE_TYPED}
    if not cc_exact:
        extra["cache_creation"] = usage["cache_creation"]
    if not st_exact:
        extra["server_tool_use"] = usage["server_tool_use"]
    if tier is not None and not isinstance(tier, str):
        extra["service_tier"] = tier
    return typed, extra


def response_fields(message: Mapping[str, Any]) -> dict[str, Any]:
    """ClaudeResponse fields for a Messages API response (a JSON object)."""
    blocks = message.get("content") or []
    usage, usage_extra = usage_fields(message.get("usage") or {})
    extra_message = {k: v for k, v in message.items() if k not in _MESSAGE_TYPED}
    extra: dict[str, Any] = {}
    if extra_message:
        extra["message"] = extra_message
    if usage_extra:
        extra["usage"] = usage_extra
    typed_blocks = [
        _response_block(b, f"content[{i}]") for i, b in enumerate(blocks) if isinstance(b, Mapping)
    ]
    return {
        "model": str(message.get("model", "")),
        "content": "".join(
            str(b.get("text", ""))
            for b in blocks
            if isinstance(b, Mapping) and b.get("type") == "text"
        ),
        "stop_reason": message.get("stop_reason"),
        "stop_sequence": message.get("stop_sequence"),
        "usage": usage,
        "message_id": message.get("id"),
        "blocks": typed_blocks,
        "extra_json": dump_json(extra, "response") if extra else None,
    }


# -- response: record -> message ---------------------------------------------------------


def _response_block_param(value: object, path: str) -> dict[str, Any]:
    name, f = branch(value, path)
    if name == NS + "TextBlock":
        out: dict[str, Any] = {"type": "text", "text": f["text"]}
        out["citations"] = (
            None if f.get("citations") is None else [drop_nulls(c) for c in f["citations"]]
        )
        return out
    if name in (NS + "ToolUseBlock", NS + "ServerToolUseBlock"):
        kind = "tool_use" if name == NS + "ToolUseBlock" else "server_tool_use"
        return {
            "type": kind,
            "id": f["id"],
            "name": f["name"],
            "input": load_json(f["input_json"], f"{path}.input"),
        }
    return block_param(value, path)


def usage_param(usage: Record, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "input_tokens": usage["input_tokens"],
        "output_tokens": usage["output_tokens"],
        "cache_read_input_tokens": usage["cache_read_input_tokens"],
        "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
    }
    for name in ("cache_creation", "server_tool_use", "service_tier"):
        if usage.get(name) is not None:
            value = usage[name]
            out[name] = dict(value) if isinstance(value, Mapping) else value
    out.update(extra or {})
    return out


def message_from_record(record: Record) -> dict[str, Any]:
    """The Messages API response a ClaudeResponse record stands for.

    An `error` record gives Anthropic's error envelope instead (what the HTTP API
    answers for a failed call): ``{"type": "error", "error": {"type", "message"}}``.
    Records from before schema version 3 carry only the joined text: it comes back
    as one text block.
    """
    if record.get("status") != "ok":
        return {
            "type": "error",
            "error": {
                "type": record.get("error_type") or "api_error",
                "message": record.get("error_message") or "",
            },
            "request_id": record.get("upstream_request_id"),
        }
    extra = load_json(record["extra_json"], "extra_json") if record.get("extra_json") else {}
    blocks = record.get("blocks")
    if blocks is None:
        text = record.get("content") or ""
        content = [{"type": "text", "text": text, "citations": None}] if text else []
    else:
        content = [_response_block_param(b, f"blocks[{i}]") for i, b in enumerate(blocks)]
    message: dict[str, Any] = {
        "id": record.get("message_id") or f"msg_{record.get('request_id', '')}",
        "type": "message",
        "role": "assistant",
        "model": record.get("model") or "",
        "content": content,
        "stop_reason": record.get("stop_reason"),
        "stop_sequence": record.get("stop_sequence"),
        "usage": usage_param(record["usage"], extra.get("usage")),
    }
    message.update(extra.get("message") or {})
    return message
