"""The fields of a ClaudeRequest record (any schema version) -> Messages API params."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.messages.governance import GOVERNED, beta_params_need_betas, betas_field
from pipeline.messages.request import CUSTOM_TOOL_TYPED
from pipeline.messages.values import NS, WireError, drop_nulls, load_json

Record = Mapping[str, Any]


def _cc_param(value: Record | None) -> dict[str, Any] | None:
    return None if value is None else drop_nulls(value)


def branch(value: object, path: str) -> tuple[str, Record]:
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not isinstance(value[0], str)
        or not isinstance(value[1], Mapping)
    ):
        raise WireError(path, "not a decoded union branch")
    return value[0], value[1]


def _source_param(value: object, path: str) -> dict[str, Any]:
    name, f = branch(value, path)
    if name == NS + "Base64Source":
        return {
            "type": "base64",
            "media_type": f["media_type"],
            "data": base64.b64encode(bytes(f["data"])).decode("ascii"),
        }
    if name == NS + "UrlSource":
        return {"type": "url", "url": f["url"]}
    if name == NS + "FileSource":
        return {"type": "file", "file_id": f["file_id"]}
    if name == NS + "PlainTextSource":
        return {"type": "text", "media_type": f["media_type"], "data": f["data"]}
    content = f["content"]
    if isinstance(content, str):
        return {"type": "content", "content": content}
    return {
        "type": "content",
        "content": [block_param(b, f"{path}.content[{i}]") for i, b in enumerate(content)],
    }


def text_param(f: Record) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "text", "text": f["text"]}
    if f.get("citations") is not None:
        out["citations"] = [drop_nulls(c) for c in f["citations"]]
    if f.get("cache_control") is not None:
        out["cache_control"] = _cc_param(f["cache_control"])
    return out


def with_optional(out: dict[str, Any], **optional: Any) -> dict[str, Any]:
    out.update((k, v) for k, v in optional.items() if v is not None)
    return out


def block_param(value: object, path: str) -> dict[str, Any]:
    name, f = branch(value, path)
    short = name.removeprefix(NS)
    cc = _cc_param(f.get("cache_control"))
    if short == "TextBlock":
        return text_param(f)
    if short == "ImageBlock":
        return with_optional(
            {"type": "image", "source": _source_param(f["source"], f"{path}.source")},
            cache_control=cc,
        )
    if short == "DocumentBlock":
        citations = f.get("citations")
        return with_optional(
            {"type": "document", "source": _source_param(f["source"], f"{path}.source")},
            title=f.get("title"),
            context=f.get("context"),
            citations=None if citations is None else drop_nulls(citations),
            cache_control=cc,
        )
    if short == "SearchResultBlock":
        citations = f.get("citations")
        return with_optional(
            {
                "type": "search_result",
                "source": f["source"],
                "title": f["title"],
                "content": [text_param(t) for t in f["content"]],
            },
            citations=None if citations is None else drop_nulls(citations),
            cache_control=cc,
        )
    if short == "ToolUseBlock":
        return with_optional(
            {
                "type": "tool_use",
                "id": f["id"],
                "name": f["name"],
                "input": load_json(f["input_json"], f"{path}.input"),
            },
            cache_control=cc,
        )
    if short == "ToolResultBlock":
        content = f.get("content")
        if isinstance(content, list):
            content = [block_param(b, f"{path}.content[{i}]") for i, b in enumerate(content)]
        return with_optional(
            {"type": "tool_result", "tool_use_id": f["tool_use_id"]},
            content=content,
            is_error=f.get("is_error"),
            cache_control=cc,
        )
    if short == "ThinkingBlock":
        return {"type": "thinking", "thinking": f["thinking"], "signature": f["signature"]}
    if short == "RedactedThinkingBlock":
        return {"type": "redacted_thinking", "data": f["data"]}
    if short == "OtherBlock":
        block = load_json(f["json"], path)
        if not isinstance(block.get("type"), str):
            raise WireError(f"{path}.type", "an unknown block needs a string type")
        return dict(block)
    raise WireError(path, f"unknown block record {name}")


def _content_param(content: object, path: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise WireError(path, "must be a string or a list of blocks")
    return [block_param(b, f"{path}[{i}]") for i, b in enumerate(content)]


def _tool_param(value: object, path: str) -> dict[str, Any]:
    name, f = branch(value, path)
    if name == NS + "CustomTool":
        out: dict[str, Any] = {}
        if f.get("type") is not None:
            out["type"] = f["type"]
        out["name"] = f["name"]
        if f.get("description") is not None:
            out["description"] = f["description"]
        out["input_schema"] = load_json(f["input_schema_json"], f"{path}.input_schema")
        with_optional(out, cache_control=_cc_param(f.get("cache_control")), strict=f.get("strict"))
        if f.get("extra_json"):
            extra = load_json(f["extra_json"], path)
            clash = [k for k in extra if k in CUSTOM_TOOL_TYPED]
            if clash:
                raise WireError(f"{path}.{clash[0]}", "set twice (typed and in extra_json)")
            out.update(extra)
        return out
    config = load_json(f["config_json"], path)
    if "type" in config or "name" in config:
        raise WireError(path, "config_json may not set type or name")
    tool: dict[str, Any] = with_optional({"type": f["type"]}, name=f.get("name"))
    tool.update(config)
    return tool


def fields_to_params(record: Record) -> dict[str, Any]:
    """The Messages API params a ClaudeRequest record (any schema version) stands for.

    Raises WireError (naming the field) for what no valid request can hold:
    invalid or too deeply nested JSON, a governed key in extra_params_json.
    """
    betas = betas_field(record.get("betas"))  # they become a header: names only
    params: dict[str, Any] = {
        "model": record["model"],
        "max_tokens": record["max_tokens"],
        "messages": [
            {"role": m["role"], "content": _content_param(m["content"], f"messages[{i}].content")}
            for i, m in enumerate(record["messages"])
        ],
    }
    system = record.get("system")
    if isinstance(system, list):
        params["system"] = [text_param(b) for b in system]
    elif system:
        params["system"] = system
    for name in ("temperature", "top_p", "top_k", "service_tier"):
        if record.get(name) is not None:
            params[name] = record[name]
    if record.get("stop_sequences"):
        params["stop_sequences"] = list(record["stop_sequences"])
    user_id = (record.get("metadata") or {}).get("user_id")
    if user_id:
        params["metadata"] = {"user_id": user_id}
    if record.get("tools") is not None:
        params["tools"] = [_tool_param(t, f"tools[{i}]") for i, t in enumerate(record["tools"])]
    for name in ("tool_choice", "thinking", "cache_control"):
        if record.get(name) is not None:
            params[name] = drop_nulls(record[name])
    if record.get("extra_params_json"):
        extra = load_json(record["extra_params_json"], "extra_params_json")
        governed = sorted(k for k in extra if k in GOVERNED)
        if governed:
            raise WireError(
                f"extra_params_json.{governed[0]}",
                "a governed parameter cannot be set through extra_params_json",
            )
        beta_params_need_betas(extra, betas, "extra_params_json.")
        params.update(extra)
    return params


def walk_blocks(params: Mapping[str, Any], visit: Callable[[Mapping[str, Any], str], None]) -> None:
    """Call `visit(block, path)` for every content block of a params dict, nested ones too."""

    def walk(block: object, path: str) -> None:
        if not isinstance(block, Mapping):
            return
        visit(block, path)
        source = block.get("source")
        if isinstance(source, Mapping) and isinstance(source.get("content"), list):
            for i, item in enumerate(source["content"]):
                walk(item, f"{path}.source.content[{i}]")
        content = block.get("content")
        if isinstance(content, list):
            for i, item in enumerate(content):
                walk(item, f"{path}.content[{i}]")

    system = params.get("system")
    if isinstance(system, list):
        for i, block in enumerate(system):
            walk(block, f"system[{i}]")
    for i, message in enumerate(params.get("messages") or ()):
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            for j, block in enumerate(content):
                walk(block, f"messages[{i}].content[{j}]")


def json_body(params: Mapping[str, Any]) -> bytes:
    """`params` as the JSON body of a Messages API call."""
    return json.dumps(params, ensure_ascii=False, separators=(",", ":")).encode()
