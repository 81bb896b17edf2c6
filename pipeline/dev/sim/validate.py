"""Request validation with the real API's status codes and message shapes.

Paths in messages follow the API's own style (``messages.0.content.1.image.source``).
Everything here is what the API refuses with a 400 before generating anything:
block types per role, tool_use/tool_result pairing, image and document sources,
cache breakpoints, thinking budgets, tool names and tool_choice.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.dev.sim.blocks import (
    Counts,
    check_breakpoints,
    check_content,
    check_pairing,
)
from pipeline.dev.sim.catalog import ModelInfo, find_model
from pipeline.dev.sim.errors import ApiError, invalid
from pipeline.messages.governance import BETA_PARAMS

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
        "cache_control",
        "output_config",
    }
)

#: Parameters the API accepts only when `anthropic-beta` names their beta (by
#: prefix: any version of it); without it, they are extra inputs. The same
#: table the pipeline's partner library refuses them by.
BETA_FIELDS = BETA_PARAMS
#: Tools the same way: a tool type (prefix) and the beta it needs.
BETA_TOOLS = {"advisor_": "advisor-tool-", "mcp_toolset": "mcp-client-"}
_COUNT_BETA_FIELDS = ("mcp_servers", "context_management")


MIN_THINKING_BUDGET = 1_024
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
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
    "browser_toolset_",
    *BETA_TOOLS,
)
THINKING_TYPES = ("enabled", "disabled", "adaptive", "between_tools")


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
    speed: str | None = None
    inference_geo: str | None = None

    @property
    def thinking_budget(self) -> int | None:
        if self.thinking is not None and self.thinking.get("type") == "enabled":
            return int(self.thinking["budget_tokens"])
        return None


def _check_system(system: object, counts: Counts) -> None:
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


def _check_messages(messages: object, counts: Counts) -> Sequence[Mapping[str, Any]]:
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
        check_content(i, str(role), message["content"], counts)
    if messages[0].get("role") != "user":
        raise invalid('messages: first message must use the "user" role')
    check_pairing(messages)
    return messages


def _has_beta(betas: Collection[str], prefix: str) -> bool:
    return any(b.startswith(prefix) for b in betas)


def _check_tools(
    tools: object, counts: Counts, betas: Collection[str] = ()
) -> list[Mapping[str, Any]] | None:
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
            if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
                raise invalid(
                    f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                )
            schema = tool.get("input_schema")
            if not isinstance(schema, Mapping):
                raise invalid(f"tools.{i}.custom.input_schema: Field required")
            if schema.get("type") != "object":
                raise invalid(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
        elif (
            not isinstance(kind, str)
            or not kind.startswith(SERVER_TOOL_PREFIXES)
            or any(kind.startswith(t) and not _has_beta(betas, b) for t, b in BETA_TOOLS.items())
        ):
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
    if not isinstance(thinking, Mapping) or thinking.get("type") not in THINKING_TYPES:
        raise invalid(
            "thinking.type: Input should be 'enabled', 'disabled', 'adaptive' or 'between_tools'"
        )
    if thinking["type"] == "between_tools":
        for key in thinking:
            if key != "type":
                raise invalid(f"thinking.between_tools.{key}: Extra inputs are not permitted")
    if thinking["type"] in ("disabled", "between_tools"):
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


def _check_extra(
    body: Mapping[str, Any],
    allowed: Collection[str],
    betas: Collection[str],
    beta_fields: Collection[str],
) -> None:
    """Unknown keys are extra inputs, and so is a beta parameter without its beta."""
    for key in body:
        if key in beta_fields and _has_beta(betas, BETA_FIELDS[key]):
            continue
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


def validate_messages(body: object, betas: Collection[str] = ()) -> MessagesRequest:
    """`betas`: what the request's `anthropic-beta` header names."""
    if not isinstance(body, Mapping):
        raise invalid("Request body must be a JSON object")
    _check_extra(body, _MESSAGE_FIELDS, betas, BETA_FIELDS)
    model, name = _check_model(body)
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise invalid("max_tokens: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise invalid("max_tokens: Input should be a valid integer")
    if max_tokens < 0:  # 0 pre-warms the prompt cache (the SDK documents it)
        raise invalid("max_tokens: Input should be greater than or equal to 0")
    if max_tokens > model.max_output_tokens:
        raise invalid(
            f"max_tokens: {max_tokens} > {model.max_output_tokens}, which is the maximum "
            f"allowed number of output tokens for {model.id}"
        )
    counts = Counts()
    tools = _check_tools(body.get("tools"), counts, betas)
    system = body.get("system")
    _check_system(system, counts)
    messages = _check_messages(body.get("messages"), counts)
    counts.breakpoint(body.get("cache_control"), "cache_control")
    check_breakpoints(counts)
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
        speed=_choice(body, "speed", ("standard", "fast")),
        inference_geo=_text(body, "inference_geo"),
    )


def _choice(body: Mapping[str, Any], key: str, values: tuple[str, ...]) -> str | None:
    value = body.get(key)
    if value is not None and value not in values:
        raise invalid(f"{key}: Input should be {' or '.join(repr(v) for v in values)}")
    return value


def _text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise invalid(f"{key}: Input should be a valid string")
    return value


def validate_count_tokens(
    body: object, betas: Collection[str] = ()
) -> tuple[ModelInfo, Sequence[Mapping[str, Any]], object, Sequence[object] | None]:
    if not isinstance(body, Mapping):
        raise invalid("Request body must be a JSON object")
    _check_extra(body, _COUNT_FIELDS, betas, _COUNT_BETA_FIELDS)
    model, _ = _check_model(body)
    counts = Counts()
    tools = _check_tools(body.get("tools"), counts, betas)
    system = body.get("system")
    _check_system(system, counts)
    messages = _check_messages(body.get("messages"), counts)
    check_breakpoints(counts)
    return model, messages, system, tools
