"""A Messages API params dict -> the fields of a ClaudeRequest record."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.messages.governance import (
    GOVERNED,
    REFUSED,
    SDK_KEYWORDS,
    SDK_OPTIONS,
    beta_params_need_betas,
    betas_field,
)
from pipeline.messages.values import (
    NS,
    WireError,
    dump_json,
    is_int,
    is_number,
    maybe,
    need,
    only,
)


def cache_control_fields(value: object, path: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise WireError(path, "must be an object like {'type': 'ephemeral', 'ttl': '5m'}")
    if not only(value, frozenset({"type", "ttl"})):
        extra = next(k for k in value if k not in ("type", "ttl"))
        raise WireError(f"{path}.{extra}", "unknown key (cache_control has type and ttl)")
    kind = need(value, "type", str, path)
    ttl = maybe(value, "ttl", str, path)
    return {"type": kind, "ttl": ttl}


_CITATION_STR = ("cited_text", "document_title", "file_id", "source", "title", "url")
_CITATION_STR_ALL = (*_CITATION_STR, "encrypted_index")
_CITATION_INT = (
    "document_index",
    "start_char_index",
    "end_char_index",
    "start_page_number",
    "end_page_number",
    "start_block_index",
    "end_block_index",
    "search_result_index",
)
_CITATION_KEYS = frozenset({"type", *_CITATION_STR_ALL, *_CITATION_INT})


def _citation(value: object) -> dict[str, Any] | None:
    """A typed Citation, or None if this one does not fit the record exactly."""
    if not isinstance(value, Mapping) or not only(value, _CITATION_KEYS):
        return None
    if not isinstance(value.get("type"), str) or not isinstance(value.get("cited_text"), str):
        return None
    out: dict[str, Any] = {"type": value["type"]}
    for key in _CITATION_STR_ALL:
        v = value.get(key)
        if v is not None and not isinstance(v, str):
            return None
        out[key] = v
    for key in _CITATION_INT:
        v = value.get(key)
        if v is not None and not is_int(v):
            return None
        out[key] = v
    return out


def _citations(value: object) -> list[dict[str, Any]] | bool | None:
    """Typed citations; None when absent; False when they do not fit (use an OtherBlock)."""
    if value is None:
        return None
    if not isinstance(value, list):
        return False
    typed = [_citation(c) for c in value]
    if any(c is None for c in typed):
        return False
    return [c for c in typed if c is not None]


def _citations_config(value: object, path: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not only(value, frozenset({"enabled"})):
        raise WireError(path, "must be an object like {'enabled': true}")
    return {"enabled": maybe(value, "enabled", bool, path)}


def text_block_fields(block: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    text = need(block, "text", str, path)
    citations = _citations(block.get("citations"))
    if citations is False:
        return None
    return {
        "text": text,
        "citations": citations,
        "cache_control": cache_control_fields(block.get("cache_control"), f"{path}.cache_control"),
    }


def _b64_bytes(data: object, path: str) -> bytes:
    if not isinstance(data, str):
        raise WireError(path, "must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise WireError(path, "invalid base64") from None
    if base64.b64encode(raw).decode("ascii") != data:
        # The wire keeps the decoded bytes: only canonical base64 comes back identical.
        raise WireError(path, "not canonical base64 (padding, line breaks or a URL-safe alphabet)")
    return raw


def _source(source: object, path: str, kinds: frozenset[str]) -> tuple[str, dict[str, Any]]:
    if not isinstance(source, Mapping):
        raise WireError(path, "must be an object")
    kind = need(source, "type", str, path)
    if kind not in kinds:
        raise WireError(f"{path}.type", f"must be one of {', '.join(sorted(kinds))}")
    if kind == "base64":
        if not only(source, frozenset({"type", "media_type", "data"})):
            raise WireError(path, "a base64 source has type, media_type and data")
        media_type = need(source, "media_type", str, path)
        return NS + "Base64Source", {
            "media_type": media_type,
            "data": _b64_bytes(source.get("data"), f"{path}.data"),
        }
    if kind == "url":
        if not only(source, frozenset({"type", "url"})):
            raise WireError(path, "a url source has type and url")
        return NS + "UrlSource", {"url": need(source, "url", str, path)}
    if kind == "file":
        if not only(source, frozenset({"type", "file_id"})):
            raise WireError(path, "a file source has type and file_id")
        return NS + "FileSource", {"file_id": need(source, "file_id", str, path)}
    if kind == "text":
        if not only(source, frozenset({"type", "media_type", "data"})):
            raise WireError(path, "a text source has type, media_type and data")
        return NS + "PlainTextSource", {
            "media_type": need(source, "media_type", str, path),
            "data": need(source, "data", str, path),
        }
    # kind == "content"
    if not only(source, frozenset({"type", "content"})):
        raise WireError(path, "a content source has type and content")
    content = source.get("content")
    if isinstance(content, str):
        return NS + "ContentSource", {"content": content}
    if not isinstance(content, list):
        raise WireError(f"{path}.content", "must be a string or a list of text and image blocks")
    blocks = []
    for i, item in enumerate(content):
        name, fields = _block(item, f"{path}.content[{i}]")
        if name not in (NS + "TextBlock", NS + "ImageBlock"):
            raise WireError(f"{path}.content[{i}]", "a content source holds text and image blocks")
        blocks.append((name, fields))
    return NS + "ContentSource", {"content": blocks}


_IMAGE_SOURCES = frozenset({"base64", "url", "file"})
_DOCUMENT_SOURCES = frozenset({"base64", "text", "content", "url", "file"})
_TOOL_RESULT_ITEMS = frozenset(
    {NS + "TextBlock", NS + "ImageBlock", NS + "SearchResultBlock", NS + "DocumentBlock"}
)

#: Keys each typed request block may have; a block with others travels as an OtherBlock.
_BLOCK_KEYS: dict[str, frozenset[str]] = {
    "text": frozenset({"type", "text", "citations", "cache_control"}),
    "image": frozenset({"type", "source", "cache_control"}),
    "document": frozenset({"type", "source", "title", "context", "citations", "cache_control"}),
    "search_result": frozenset(
        {"type", "source", "title", "content", "citations", "cache_control"}
    ),
    "tool_use": frozenset({"type", "id", "name", "input", "cache_control"}),
    "tool_result": frozenset({"type", "tool_use_id", "content", "is_error", "cache_control"}),
    "thinking": frozenset({"type", "thinking", "signature"}),
    "redacted_thinking": frozenset({"type", "data"}),
}


def other_block(block: Mapping[str, Any], path: str) -> tuple[str, dict[str, Any]]:
    return NS + "OtherBlock", {"type": str(block["type"]), "json": dump_json(block, path)}


def _block(block: object, path: str) -> tuple[str, dict[str, Any]]:
    """One request content block as (record name, fields)."""
    if not isinstance(block, Mapping):
        raise WireError(path, "a content block must be an object with a type")
    kind = need(block, "type", str, path)
    allowed = _BLOCK_KEYS.get(kind)
    if allowed is None or not only(block, allowed):
        return other_block(block, path)
    cc = cache_control_fields(block.get("cache_control"), f"{path}.cache_control")
    if kind == "text":
        text = text_block_fields(block, path)
        return (NS + "TextBlock", text) if text is not None else other_block(block, path)
    if kind == "image":
        source = _source(block.get("source"), f"{path}.source", _IMAGE_SOURCES)
        return NS + "ImageBlock", {"source": source, "cache_control": cc}
    if kind == "document":
        source = _source(block.get("source"), f"{path}.source", _DOCUMENT_SOURCES)
        return NS + "DocumentBlock", {
            "source": source,
            "title": maybe(block, "title", str, path),
            "context": maybe(block, "context", str, path),
            "citations": _citations_config(block.get("citations"), f"{path}.citations"),
            "cache_control": cc,
        }
    if kind == "search_result":
        content = need(block, "content", list, path)
        texts = []
        for i, item in enumerate(content):
            name, fields = _block(item, f"{path}.content[{i}]")
            if name != NS + "TextBlock":
                raise WireError(f"{path}.content[{i}]", "a search result holds text blocks")
            texts.append(fields)
        return NS + "SearchResultBlock", {
            "source": need(block, "source", str, path),
            "title": need(block, "title", str, path),
            "content": texts,
            "citations": _citations_config(block.get("citations"), f"{path}.citations"),
            "cache_control": cc,
        }
    if kind == "tool_use":
        tool_input = need(block, "input", dict, path)
        return NS + "ToolUseBlock", {
            "id": need(block, "id", str, path),
            "name": need(block, "name", str, path),
            "input_json": dump_json(tool_input, f"{path}.input"),
            "cache_control": cc,
        }
    if kind == "tool_result":
        content = block.get("content")
        items: str | list[tuple[str, dict[str, Any]]] | None
        if content is None or isinstance(content, str):
            items = content
        elif isinstance(content, list):
            items = []
            for i, item in enumerate(content):
                name, fields = _block(item, f"{path}.content[{i}]")
                if name not in _TOOL_RESULT_ITEMS and name != NS + "OtherBlock":
                    raise WireError(
                        f"{path}.content[{i}]",
                        "a tool result holds text, image, search_result and document blocks",
                    )
                items.append((name, fields))
        else:
            raise WireError(f"{path}.content", "must be a string or a list of blocks")
        return NS + "ToolResultBlock", {
            "tool_use_id": need(block, "tool_use_id", str, path),
            "content": items,
            "is_error": maybe(block, "is_error", bool, path),
            "cache_control": cc,
        }
    if kind == "thinking":
        return NS + "ThinkingBlock", {
            "thinking": need(block, "thinking", str, path),
            "signature": need(block, "signature", str, path),
        }
    return NS + "RedactedThinkingBlock", {"data": need(block, "data", str, path)}


def _content(content: object, path: str) -> str | list[tuple[str, dict[str, Any]]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise WireError(path, "must be a string or a list of content blocks")
    return [_block(block, f"{path}[{i}]") for i, block in enumerate(content)]


def _messages(messages: object) -> list[dict[str, Any]]:
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise WireError("messages", "must be a list of {role, content} objects")
    out = []
    for i, message in enumerate(messages):
        path = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise WireError(path, "must be an object with role and content")
        extra = [k for k in message if k not in ("role", "content")]
        if extra:
            raise WireError(f"{path}.{extra[0]}", "unknown key (a message has role and content)")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise WireError(f"{path}.role", "must be 'user' or 'assistant'")
        if "content" not in message:
            raise WireError(f"{path}.content", "required")
        out.append({"role": role, "content": _content(message["content"], f"{path}.content")})
    return out


def _system(system: object) -> str | list[dict[str, Any]] | None:
    if system is None or isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise WireError("system", "must be a string or a list of text blocks")
    blocks = []
    for i, block in enumerate(system):
        path = f"system[{i}]"
        if not isinstance(block, Mapping) or block.get("type") != "text":
            raise WireError(path, "system blocks must be text blocks")
        if not only(block, _BLOCK_KEYS["text"]):
            extra = next(k for k in block if k not in _BLOCK_KEYS["text"])
            raise WireError(f"{path}.{extra}", "unknown key of a system text block")
        text = text_block_fields(block, path)
        if text is None:
            raise WireError(f"{path}.citations", "citations the schema cannot carry")
        blocks.append(text)
    return blocks


CUSTOM_TOOL_TYPED = frozenset(
    {"name", "description", "input_schema", "cache_control", "type", "strict"}
)


def _tool(tool: object, path: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(tool, Mapping):
        raise WireError(path, "a tool must be an object")
    kind = tool.get("type")
    if kind is None or kind == "custom":
        schema = need(tool, "input_schema", dict, path)
        extra = {k: v for k, v in tool.items() if k not in CUSTOM_TOOL_TYPED}
        return NS + "CustomTool", {
            "name": need(tool, "name", str, path),
            "description": maybe(tool, "description", str, path),
            "input_schema_json": dump_json(schema, f"{path}.input_schema"),
            "cache_control": cache_control_fields(
                tool.get("cache_control"), f"{path}.cache_control"
            ),
            "type": kind,
            "strict": maybe(tool, "strict", bool, path),
            "extra_json": dump_json(extra, path) if extra else None,
        }
    if not isinstance(kind, str):
        raise WireError(f"{path}.type", "must be a string")
    config = {k: v for k, v in tool.items() if k not in ("type", "name")}
    return NS + "ServerTool", {
        "type": kind,
        "name": maybe(tool, "name", str, path),
        "config_json": dump_json(config, path),
    }


def _strict_record(
    value: object, path: str, keys: dict[str, type], required: tuple[str, ...]
) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise WireError(path, "must be an object")
    for key in value:
        if key not in keys:
            raise WireError(f"{path}.{key}", f"unknown key ({', '.join(keys)} are known)")
    out = {}
    for key, kind in keys.items():
        out[key] = (need if key in required else maybe)(value, key, kind, path)
    return out


def _metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise WireError("metadata", "must be an object like {'user_id': '...'}")
    for key in value:
        if key != "user_id":
            raise WireError(f"metadata.{key}", "the Messages API accepts only metadata.user_id")
    user_id = maybe(value, "user_id", str, "metadata")
    return {} if user_id is None else {"user_id": user_id}


def params_to_fields(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ClaudeRequest fields that carry a Messages API params dict (no ids, no times)."""
    if not isinstance(params, Mapping):
        raise WireError("", "params must be a dict, as passed to client.messages.create")
    for key in params:
        if key in SDK_OPTIONS:
            raise WireError(key, "an SDK request option, not an API parameter: it cannot travel")
        if key not in SDK_KEYWORDS:
            raise WireError(
                key,
                "not a parameter of messages.create (pass a parameter newer than the SDK "
                "in extra_body, as the SDK does)",
            )
    if params.get("extra_body") is not None:
        extra_body = params["extra_body"]
        if not isinstance(extra_body, Mapping):
            raise WireError("extra_body", "must be an object (merged into the request body)")
        params = {**{k: v for k, v in params.items() if k != "extra_body"}, **extra_body}
    betas = betas_field(params.get("betas"))
    beta_params_need_betas(params, betas, "")
    for key, why in REFUSED.items():
        if key == "stream" and not params.get(key):
            continue  # stream=False is what Kafka does anyway
        if key in params and (key == "stream" or params[key] is not None):
            raise WireError(key, why)
    model = need(params, "model", str, "")
    max_tokens = params.get("max_tokens")
    if not is_int(max_tokens):
        raise WireError("max_tokens", "required, an integer")
    if "messages" not in params:
        raise WireError("messages", "required")
    stops = params.get("stop_sequences") or []
    if isinstance(stops, str) or not isinstance(stops, Sequence):
        raise WireError("stop_sequences", "must be a list of strings")
    if not all(isinstance(s, str) for s in stops):
        raise WireError("stop_sequences", "must be a list of strings")
    tools = params.get("tools")
    if tools is not None and (isinstance(tools, str) or not isinstance(tools, Sequence)):
        raise WireError("tools", "must be a list of tool definitions")
    for name in ("temperature", "top_p"):
        if params.get(name) is not None and not is_number(params[name]):
            raise WireError(name, "must be a number")
    if params.get("top_k") is not None and not is_int(params["top_k"]):
        raise WireError("top_k", "must be an integer")
    if params.get("service_tier") is not None and not isinstance(params["service_tier"], str):
        raise WireError("service_tier", "must be a string")
    extra = {k: v for k, v in params.items() if k not in GOVERNED and v is not None}
    return {
        "model": model,
        "max_tokens": max_tokens,
        "messages": _messages(params["messages"]),
        "system": _system(params.get("system")),
        "temperature": None if params.get("temperature") is None else float(params["temperature"]),
        "top_p": None if params.get("top_p") is None else float(params["top_p"]),
        "top_k": params.get("top_k"),
        "stop_sequences": list(stops),
        "metadata": _metadata(params.get("metadata")),
        "tools": None if tools is None else [_tool(t, f"tools[{i}]") for i, t in enumerate(tools)],
        "tool_choice": _strict_record(
            params.get("tool_choice"),
            "tool_choice",
            {"type": str, "name": str, "disable_parallel_tool_use": bool},
            ("type",),
        ),
        "thinking": _strict_record(
            params.get("thinking"),
            "thinking",
            {"type": str, "budget_tokens": int, "display": str},
            ("type",),
        ),
        "service_tier": params.get("service_tier"),
        "cache_control": cache_control_fields(params.get("cache_control"), "cache_control"),
        "extra_params_json": dump_json(extra, "extra params") if extra else None,
        "betas": betas,
    }
