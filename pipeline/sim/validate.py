"""Request validation with the real API's status codes and message shapes.

Paths in messages follow the API's own style (``messages.0.content.1.image.source``).
Everything here is what the API refuses with a 400 before generating anything:
block types per role, tool_use/tool_result pairing, image and document sources,
cache breakpoints, thinking budgets, tool names and tool_choice.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline import media
from pipeline.sim.catalog import ModelInfo, find_model


class ApiError(Exception):
    """An error response: status, Anthropic error type, message, extra headers."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})


def invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)


_MESSAGE_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "stream",
        "metadata",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "cache_control",
        "container",
        "mcp_servers",
        "context_management",
        "output_config",
        "diagnostics",
        "inference_geo",
        "speed",
    }
)
_COUNT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "mcp_servers",
        "cache_control",
        "output_config",
        "context_management",
    }
)

#: Which block types each role may send.
USER_BLOCKS = frozenset({"text", "image", "document", "search_result", "tool_result"})
ASSISTANT_BLOCKS = frozenset(
    {
        "text",
        "tool_use",
        "thinking",
        "redacted_thinking",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
    }
)
_ALL_BLOCKS = USER_BLOCKS | ASSISTANT_BLOCKS

MAX_IMAGE_BYTES = 5 * 1024 * 1024
MAX_IMAGES = 100
MAX_IMAGE_EDGE = 8_000
MAX_CACHE_BREAKPOINTS = 4
MIN_THINKING_BUDGET = 1_024
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
CACHE_TTLS = ("5m", "1h")
TOOL_CHOICES = ("auto", "any", "tool", "none")
SERVICE_TIERS = ("auto", "standard_only")
SERVER_TOOL_PREFIXES = (
    "web_search_",
    "web_fetch_",
    "code_execution_",
    "bash_",
    "text_editor_",
    "memory_",
    "tool_search_tool_",
    "computer_",
)

#: Signs the simulator's thinking blocks, so a modified one can be refused as the API does.
_THINKING_KEY = b"claude-pipeline simulator thinking signatures"


def thinking_signature(thinking: str) -> str:
    digest = hmac.new(_THINKING_KEY, thinking.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return base64.b64encode(b"sim-thinking-v1:" + digest.digest()).decode("ascii")


@dataclass(frozen=True)
class MessagesRequest:
    model: ModelInfo
    model_name: str
    messages: Sequence[Mapping[str, Any]]
    max_tokens: int
    system: object
    tools: Sequence[Mapping[str, Any]] | None
    stop_sequences: tuple[str, ...]
    stream: bool
    tool_choice: Mapping[str, Any] | None = None
    thinking: Mapping[str, Any] | None = None
    cache_control: Mapping[str, Any] | None = None
    service_tier: str | None = None

    @property
    def thinking_budget(self) -> int | None:
        if self.thinking is not None and self.thinking.get("type") == "enabled":
            return int(self.thinking["budget_tokens"])
        return None


def _b64(data: object, where: str) -> bytes:
    if not isinstance(data, str):
        raise invalid(f"{where}.data: Input should be a valid string")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{where}.data: invalid base64 data") from None


def _check_cache_control(value: object, where: str) -> str | None:
    """The TTL of a cache breakpoint ("5m" by default), None when there is none."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise invalid(f"{where}.cache_control: Input should be a valid dictionary")
    if value.get("type") != "ephemeral":
        raise invalid(f"{where}.cache_control.type: Input should be 'ephemeral'")
    ttl = value.get("ttl", "5m")
    if ttl not in CACHE_TTLS:
        raise invalid(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")
    for key in value:
        if key not in ("type", "ttl"):
            raise invalid(f"{where}.cache_control.{key}: Extra inputs are not permitted")
    return str(ttl)


class _Counts:
    """What the whole request holds, checked once all blocks are seen."""

    def __init__(self) -> None:
        self.images = 0
        self.breakpoints: list[tuple[str, str]] = []  # (where, ttl) in request order

    def breakpoint(self, value: object, where: str) -> None:
        ttl = _check_cache_control(value, where)
        if ttl is not None:
            self.breakpoints.append((where, ttl))


def _check_image(block: Mapping[str, Any], where: str, counts: _Counts) -> None:
    source = block.get("source")
    if not isinstance(source, Mapping):
        raise invalid(f"{where}.source: Field required")
    kind = source.get("type")
    counts.images += 1
    if kind == "base64":
        media_type = source.get("media_type")
        if media_type not in media.IMAGE_MEDIA_TYPES:
            raise invalid(
                f"{where}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
                "'image/gif' or 'image/webp'"
            )
        data = _b64(source.get("data"), f"{where}.source.base64")
        if len(data) > MAX_IMAGE_BYTES:
            raise invalid(
                f"{where}.source.base64: image exceeds 5 MB maximum: "
                f"{len(data)} bytes > {MAX_IMAGE_BYTES} bytes"
            )
        actual = media.sniff_image(data)
        if actual is None:
            raise invalid(f"{where}.source.base64.data: Could not process image")
        if actual != media_type:
            raise invalid(
                f"{where}.source.base64.data: Image does not match the provided media type "
                f"{media_type}"
            )
        size = media.image_size(data)
        if size is not None and max(size) > MAX_IMAGE_EDGE:
            raise invalid(
                f"{where}.source.base64.data: At least one of the image dimensions exceed max "
                f"allowed size: {MAX_IMAGE_EDGE} pixels"
            )
    elif kind == "url":
        if not isinstance(source.get("url"), str):
            raise invalid(f"{where}.source.url.url: Field required")
    elif kind == "file":
        if not isinstance(source.get("file_id"), str):
            raise invalid(f"{where}.source.file.file_id: Field required")
    else:
        raise invalid(f"{where}.source.type: Input should be 'base64', 'url' or 'file'")


def _check_document(block: Mapping[str, Any], where: str, counts: _Counts) -> None:
    source = block.get("source")
    if not isinstance(source, Mapping):
        raise invalid(f"{where}.source: Field required")
    kind = source.get("type")
    if kind == "base64":
        if source.get("media_type") != "application/pdf":
            raise invalid(f"{where}.source.base64.media_type: Input should be 'application/pdf'")
        data = _b64(source.get("data"), f"{where}.source.base64")
        if not media.is_pdf(data):
            raise invalid(f"{where}.source.base64.data: The PDF specified was not valid.")
    elif kind == "text":
        if source.get("media_type") != "text/plain":
            raise invalid(f"{where}.source.text.media_type: Input should be 'text/plain'")
        if not isinstance(source.get("data"), str):
            raise invalid(f"{where}.source.text.data: Input should be a valid string")
    elif kind == "content":
        content = source.get("content")
        if isinstance(content, list):
            for i, item in enumerate(content):
                item_where = f"{where}.source.content.content.{i}"
                if not isinstance(item, Mapping) or item.get("type") not in ("text", "image"):
                    raise invalid(f"{item_where}: Input should be a text or image block")
                _check_block(item, item_where, "user", counts)
        elif not isinstance(content, str):
            raise invalid(f"{where}.source.content.content: Input should be a string or a list")
    elif kind in ("url", "file"):
        key = "url" if kind == "url" else "file_id"
        if not isinstance(source.get(key), str):
            raise invalid(f"{where}.source.{kind}.{key}: Field required")
    else:
        raise invalid(
            f"{where}.source.type: Input should be 'base64', 'text', 'content', 'url' or 'file'"
        )


def _need_str(block: Mapping[str, Any], key: str, where: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise invalid(f"{where}.{key}: Field required")
    return value


def _check_block(block: object, where: str, role: str, counts: _Counts) -> None:
    if not isinstance(block, Mapping):
        raise invalid(f"{where}: Input should be a valid dictionary or object")
    kind = block.get("type")
    if kind not in _ALL_BLOCKS:
        raise invalid(f"{where}.type: Input tag {kind!r} found using 'type' does not match")
    allowed = USER_BLOCKS if role == "user" else ASSISTANT_BLOCKS
    if kind not in allowed:
        raise invalid(f"{where}: `{kind}` blocks are not allowed in `{role}` messages")
    counts.breakpoint(block.get("cache_control"), where)
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise invalid(f"{where}.text: Field required")
        if not text:
            raise invalid(f"{where}: text content blocks must be non-empty")
    elif kind == "image":
        _check_image(block, where, counts)
    elif kind == "document":
        _check_document(block, where, counts)
    elif kind == "tool_use":
        _need_str(block, "id", where)
        _need_str(block, "name", where)
        if not isinstance(block.get("input"), Mapping):
            raise invalid(f"{where}.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        _need_str(block, "tool_use_id", where)
        content = block.get("content")
        if isinstance(content, list):
            for i, item in enumerate(content):
                _check_block(item, f"{where}.content.{i}", "user", counts)
        elif content is not None and not isinstance(content, str):
            raise invalid(f"{where}.content: Input should be a valid string or list")
        if block.get("is_error") is not None and not isinstance(block["is_error"], bool):
            raise invalid(f"{where}.is_error: Input should be a valid boolean")
    elif kind == "thinking":
        thinking = _need_str(block, "thinking", where)
        signature = _need_str(block, "signature", where)
        if not hmac.compare_digest(signature, thinking_signature(thinking)):
            raise invalid(f"{where}: Invalid `signature` in `thinking` block")
    elif kind == "redacted_thinking":
        _need_str(block, "data", where)
    elif kind == "search_result":
        _need_str(block, "source", where)
        _need_str(block, "title", where)
        content = block.get("content")
        if not isinstance(content, list):
            raise invalid(f"{where}.content: Field required")
        for i, item in enumerate(content):
            if not isinstance(item, Mapping) or item.get("type") != "text":
                raise invalid(f"{where}.content.{i}: Input should be a text block")
            _check_block(item, f"{where}.content.{i}", "user", counts)


def _check_content(index: int, role: str, content: object, counts: _Counts) -> None:
    where = f"messages.{index}.content"
    if isinstance(content, str):
        if not content:
            raise invalid(f"{where}: text content blocks must be non-empty")
        return
    if not isinstance(content, list):
        raise invalid(f"{where}: Input should be a valid list")
    for j, block in enumerate(content):
        _check_block(block, f"{where}.{j}", role, counts)


def _tool_uses(content: object) -> list[str]:
    if not isinstance(content, list):
        return []
    return [
        str(b.get("id")) for b in content if isinstance(b, Mapping) and b.get("type") == "tool_use"
    ]


def _tool_results(content: object) -> list[str]:
    if not isinstance(content, list):
        return []
    return [
        str(b.get("tool_use_id"))
        for b in content
        if isinstance(b, Mapping) and b.get("type") == "tool_result"
    ]


def _check_pairing(messages: Sequence[Mapping[str, Any]]) -> None:
    """Each tool_result answers a tool_use of the previous assistant turn, and the
    other way round (the API's own rule, with its own message)."""
    for i, message in enumerate(messages):
        results = _tool_results(message.get("content"))
        previous = messages[i - 1] if i > 0 else None
        uses = _tool_uses(previous.get("content")) if previous else []
        if results:
            unknown = [r for r in results if r not in uses]
            if unknown:
                raise invalid(
                    f"messages.{i}.content.0: unexpected `tool_use_id` found in `tool_result` "
                    f"blocks: {', '.join(unknown)}. Each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message."
                )
        if message.get("role") == "assistant" and i + 1 < len(messages):
            answered = set(_tool_results(messages[i + 1].get("content")))
            missing = [u for u in _tool_uses(message.get("content")) if u not in answered]
            if missing:
                raise invalid(
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(missing)}. Each `tool_use` block must have "
                    "a corresponding `tool_result` block in the next message."
                )


def _check_system(system: object, counts: _Counts) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise invalid("system: Input should be a valid string or list")
    for j, block in enumerate(system):
        if not (isinstance(block, Mapping) and block.get("type") == "text"):
            raise invalid(f"system.{j}: Input should be a text block")
        if not isinstance(block.get("text"), str):
            raise invalid(f"system.{j}.text: Field required")
        counts.breakpoint(block.get("cache_control"), f"system.{j}")


def _check_messages(messages: object, counts: _Counts) -> Sequence[Mapping[str, Any]]:
    if messages is None:
        raise invalid("messages: Field required")
    if not isinstance(messages, list):
        raise invalid("messages: Input should be a valid list")
    if not messages:
        raise invalid("messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise invalid(f"messages.{i}: Input should be a valid dictionary")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise invalid(f"messages.{i}.content: Field required")
        _check_content(i, str(role), message["content"], counts)
    if messages[0].get("role") != "user":
        raise invalid('messages: first message must use the "user" role')
    _check_pairing(messages)
    return messages


def _check_tools(tools: object, counts: _Counts) -> list[Mapping[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise invalid("tools: Input should be a valid list")
    names: set[str] = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise invalid(f"tools.{i}: Input should be a valid dictionary")
        kind = tool.get("type")
        if kind is None or kind == "custom":
            name = tool.get("name")
            if not isinstance(name, str) or not TOOL_NAME.match(name):
                raise invalid(
                    f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                )
            schema = tool.get("input_schema")
            if not isinstance(schema, Mapping):
                raise invalid(f"tools.{i}.custom.input_schema: Field required")
            if schema.get("type") != "object":
                raise invalid(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
        elif not isinstance(kind, str) or not kind.startswith(SERVER_TOOL_PREFIXES):
            raise invalid(f"tools.{i}.type: Input tag {kind!r} found using 'type' does not match")
        else:
            name = str(tool.get("name", kind))
        if name in names:
            raise invalid(f"tools: Tool names must be unique. Duplicate: {name}")
        names.add(str(name))
        counts.breakpoint(tool.get("cache_control"), f"tools.{i}")
    return list(tools)


def _check_tool_choice(
    choice: object, tools: Sequence[Mapping[str, Any]] | None
) -> Mapping[str, Any] | None:
    if choice is None:
        return None
    if not isinstance(choice, Mapping) or choice.get("type") not in TOOL_CHOICES:
        raise invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    kind = choice["type"]
    if kind in ("any", "tool") and not tools:
        raise invalid(f"tool_choice: tool_choice.type '{kind}' requires tools to be provided")
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            raise invalid("tool_choice.tool.name: Field required")
        known = {str(t.get("name", t.get("type"))) for t in tools or ()}
        if name not in known:
            raise invalid(f"tool_choice.tool.name: Tool '{name}' not found in provided tools")
    flag = choice.get("disable_parallel_tool_use")
    if flag is not None and not isinstance(flag, bool):
        raise invalid(f"tool_choice.{kind}.disable_parallel_tool_use: Input should be a boolean")
    return choice


def _check_thinking(body: Mapping[str, Any], max_tokens: int) -> Mapping[str, Any] | None:
    thinking = body.get("thinking")
    if thinking is None:
        return None
    if not isinstance(thinking, Mapping) or thinking.get("type") not in (
        "enabled",
        "disabled",
        "adaptive",
    ):
        raise invalid("thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'")
    if thinking["type"] == "disabled":
        return thinking
    if thinking["type"] == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise invalid("thinking.enabled.budget_tokens: Field required")
        if budget < MIN_THINKING_BUDGET:
            raise invalid(
                "thinking.enabled.budget_tokens: Input should be greater than or equal to "
                f"{MIN_THINKING_BUDGET}"
            )
        if budget >= max_tokens:
            raise invalid("`max_tokens` must be greater than `thinking.budget_tokens`")
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise invalid(
            "`temperature` may only be set to 1 when thinking is enabled or in adaptive mode"
        )
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping) and choice.get("type") in ("any", "tool"):
        raise invalid("Thinking may not be enabled when tool_choice forces tool use.")
    return thinking


def _check_breakpoints(counts: _Counts) -> None:
    if len(counts.breakpoints) > MAX_CACHE_BREAKPOINTS:
        raise invalid(
            f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(counts.breakpoints)}."
        )
    seen_short = False
    for where, ttl in counts.breakpoints:
        if ttl == "5m":
            seen_short = True
        elif seen_short:
            raise invalid(
                f"{where}.cache_control.ttl: a ttl='1h' cache_control block must not come after "
                "a ttl='5m' cache_control block"
            )
    if counts.images > MAX_IMAGES:
        raise invalid(f"messages: Too many images: at most {MAX_IMAGES} images per request")


def _check_model(body: Mapping[str, Any]) -> tuple[ModelInfo, str]:
    name = body.get("model")
    if name is None:
        raise invalid("model: Field required")
    if not isinstance(name, str):
        raise invalid("model: Input should be a valid string")
    info = find_model(name)
    if info is None:
        raise ApiError(404, "not_found_error", f"model: {name}")
    return info, name


def _check_extra(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for key in body:
        if key not in allowed:
            raise invalid(f"{key}: Extra inputs are not permitted")


def _check_sampling(body: Mapping[str, Any]) -> None:
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not 0.0 <= float(value) <= 1.0
        ):
            raise invalid(f"{name}: Input should be a number between 0 and 1")
    top_k = body.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise invalid("top_k: Input should be a non-negative integer")
    tier = body.get("service_tier")
    if tier is not None and tier not in SERVICE_TIERS:
        raise invalid("service_tier: Input should be 'auto' or 'standard_only'")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise invalid("metadata: Input should be a valid dictionary")
        for key, value in metadata.items():
            if key != "user_id":
                raise invalid(f"metadata.{key}: Extra inputs are not permitted")
            if value is not None and (not isinstance(value, str) or len(value) > 256):
                raise invalid("metadata.user_id: String should have at most 256 characters")


def validate_messages(body: object) -> MessagesRequest:
    if not isinstance(body, Mapping):
        raise invalid("Request body must be a JSON object")
    _check_extra(body, _MESSAGE_FIELDS)
    model, name = _check_model(body)
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise invalid("max_tokens: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise invalid("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise invalid("max_tokens: Input should be greater than or equal to 1")
    if max_tokens > model.max_output_tokens:
        raise invalid(
            f"max_tokens: {max_tokens} > {model.max_output_tokens}, which is the maximum "
            f"allowed number of output tokens for {model.id}"
        )
    counts = _Counts()
    tools = _check_tools(body.get("tools"), counts)
    system = body.get("system")
    _check_system(system, counts)
    messages = _check_messages(body.get("messages"), counts)
    counts.breakpoint(body.get("cache_control"), "cache_control")
    _check_breakpoints(counts)
    _check_sampling(body)
    stops = body.get("stop_sequences") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise invalid("stop_sequences: Input should be a valid list of strings")
    choice = _check_tool_choice(body.get("tool_choice"), tools)
    thinking = _check_thinking(body, max_tokens)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream: Input should be a valid boolean")
    return MessagesRequest(
        model=model,
        model_name=name,
        messages=messages,
        max_tokens=max_tokens,
        system=system,
        tools=tools,
        stop_sequences=tuple(stops),
        stream=stream,
        tool_choice=choice,
        thinking=thinking,
        cache_control=body.get("cache_control"),
        service_tier=body.get("service_tier"),
    )


def validate_count_tokens(
    body: object,
) -> tuple[ModelInfo, Sequence[Mapping[str, Any]], object, Sequence[object] | None]:
    if not isinstance(body, Mapping):
        raise invalid("Request body must be a JSON object")
    _check_extra(body, _COUNT_FIELDS)
    model, _ = _check_model(body)
    counts = _Counts()
    tools = _check_tools(body.get("tools"), counts)
    system = body.get("system")
    _check_system(system, counts)
    messages = _check_messages(body.get("messages"), counts)
    _check_breakpoints(counts)
    return model, messages, system, tools
