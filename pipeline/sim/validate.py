"""Request validation with the real API's status codes and message shapes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
        "container",
        "mcp_servers",
        "context_management",
    }
)
_COUNT_FIELDS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"}
)
_BLOCK_TYPES = frozenset(
    {
        "text",
        "image",
        "document",
        "tool_use",
        "tool_result",
        "thinking",
        "redacted_thinking",
        "search_result",
        "server_tool_use",
        "web_search_tool_result",
    }
)


@dataclass(frozen=True)
class MessagesRequest:
    model: ModelInfo
    model_name: str
    messages: Sequence[Mapping[str, Any]]
    max_tokens: int
    system: object
    tools: Sequence[object] | None
    stop_sequences: tuple[str, ...]
    stream: bool


def _check_content(index: int, content: object) -> None:
    where = f"messages.{index}.content"
    if isinstance(content, str):
        if not content:
            raise invalid(f"{where}: text content blocks must be non-empty")
        return
    if not isinstance(content, list):
        raise invalid(f"{where}: Input should be a valid list")
    for j, block in enumerate(content):
        if not isinstance(block, Mapping):
            raise invalid(f"{where}.{j}: Input should be a valid dictionary or object")
        kind = block.get("type")
        if kind not in _BLOCK_TYPES:
            raise invalid(f"{where}.{j}.type: Input tag {kind!r} found using 'type' does not match")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise invalid(f"{where}.{j}.text: Field required")
            if not text:
                raise invalid(f"{where}.{j}: text content blocks must be non-empty")


def _check_system(system: object) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise invalid("system: Input should be a valid string or list")
    for j, block in enumerate(system):
        if not (isinstance(block, Mapping) and block.get("type") == "text"):
            raise invalid(f"system.{j}: Input should be a text block")
        if not isinstance(block.get("text"), str):
            raise invalid(f"system.{j}.text: Field required")


def _check_messages(messages: object) -> Sequence[Mapping[str, Any]]:
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
        _check_content(i, message["content"])
    if messages[0].get("role") != "user":
        raise invalid('messages: first message must use the "user" role')
    return messages


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
    messages = _check_messages(body.get("messages"))
    system = body.get("system")
    _check_system(system)
    temperature = body.get("temperature")
    if temperature is not None and (
        not isinstance(temperature, int | float) or not 0.0 <= float(temperature) <= 1.0
    ):
        raise invalid("temperature: Input should be a number between 0 and 1")
    stops = body.get("stop_sequences") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise invalid("stop_sequences: Input should be a valid list of strings")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid("tools: Input should be a valid list")
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
    )


def validate_count_tokens(
    body: object,
) -> tuple[ModelInfo, Sequence[Mapping[str, Any]], object, Sequence[object] | None]:
    if not isinstance(body, Mapping):
        raise invalid("Request body must be a JSON object")
    _check_extra(body, _COUNT_FIELDS)
    model, _ = _check_model(body)
    messages = _check_messages(body.get("messages"))
    system = body.get("system")
    _check_system(system)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid("tools: Input should be a valid list")
    return model, messages, system, tools
