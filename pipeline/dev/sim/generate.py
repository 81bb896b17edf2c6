"""Deterministic replies tied to their request.

A text reply quotes the start of the last user message, then continues with
filler words chosen by a hash of that message. Each word is one output token.
Tests can therefore tell which request a response belongs to, and a stop
sequence placed in the prompt is found in the reply.

Beyond text, as Claude does:

- tools: with tool_choice ``any`` or ``tool`` (or ``auto`` when the last user
  message names a tool) the reply is a ``tool_use`` block per chosen tool, its
  input generated from the tool's ``input_schema`` (every property, values that
  validate), and stop_reason ``tool_use``; several named tools are called in
  parallel unless ``disable_parallel_tool_use``;
- tool results: a user turn of ``tool_result`` blocks gets a final text answer
  that quotes the results;
- thinking: with thinking enabled, a ``thinking`` block with a signature comes
  first (it counts as output, within ``budget_tokens``); the API's documented
  test string turns it into a ``redacted_thinking`` block.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.dev.sim.blocks import thinking_signature

_FILLER = (
    "kafka", "stream", "partner", "fair", "queue", "token", "bucket", "budget", "claude",
    "reply", "offset", "commit", "schedule", "weight", "latency", "retry", "backoff",
    "signal", "window", "share", "limit",
)  # fmt: skip

QUOTE_WORDS = 12
THINKING_WORDS = 24
#: Anthropic's documented string that makes the API return a redacted_thinking block.
REDACTED_THINKING_TRIGGER = (
    "ANTHROPIC_MAGIC_STRING_TRIGGER_REDACTED_THINKING_"
    "46C9A13E193C177646C7398A98432ECCCE4C1253D5E2D82641AC0E52CC2876CB"
)


@dataclass(frozen=True)
class Generated:
    """A reply: content blocks exactly as the API returns them, and its output tokens."""

    blocks: tuple[dict[str, Any], ...]
    output_tokens: int
    stop_reason: str  # end_turn | max_tokens | stop_sequence | tool_use
    stop_sequence: str | None = None
    #: Output tokens per block, for streaming (charged as they are sent).
    block_tokens: tuple[int, ...] = field(default=())

    @property
    def text(self) -> str:
        return "".join(b["text"] for b in self.blocks if b["type"] == "text")


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(b.get("text", ""))
            for b in content
            if isinstance(b, Mapping) and b.get("type") == "text"
        )
    return ""


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _tool_results(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """The text of each tool_result in the last user turn (empty if it has none)."""
    last = messages[-1] if messages else None
    if last is None or last.get("role") != "user" or not isinstance(last.get("content"), list):
        return []
    return [
        _text_of(b.get("content"))
        for b in last["content"]
        if isinstance(b, Mapping) and b.get("type") == "tool_result"
    ]


def reply_words(prompt: str, target: int | None) -> list[str]:
    digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()
    length = target if target is not None else 16 + digest[0] % 49
    words = ["Re:", *prompt.split()[:QUOTE_WORDS]]
    i = 0
    while len(words) < length:
        words.append(_FILLER[digest[i % len(digest)] % len(_FILLER)])
        i += 1
    return words[:length] if length > 0 else []


# -- tool inputs from JSON Schema -------------------------------------------------------


def schema_instance(schema: object, words: Sequence[str], depth: int = 0) -> Any:
    """A value that validates against `schema` (the JSON Schema subset tools use)."""
    if not isinstance(schema, Mapping) or depth > 8:
        return words[0] if words else "value"
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            return schema_instance(options[0], words, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties")
        if not isinstance(props, Mapping):
            return {}
        return {
            name: schema_instance(sub, [*words[i % max(1, len(words)) :], *words], depth + 1)
            for i, (name, sub) in enumerate(props.items())
        }
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        if isinstance(schema.get("maxItems"), int):
            count = min(count, schema["maxItems"])
        return [schema_instance(schema.get("items"), words, depth + 1) for _ in range(count)]
    if kind == "integer":
        return _number(schema, 1, integer=True)
    if kind == "number":
        return _number(schema, 1.5, integer=False)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    text = " ".join(words[:3]) or "value"
    min_len = int(schema.get("minLength", 0))
    if len(text) < min_len:
        text = text.ljust(min_len, "x")
    if isinstance(schema.get("maxLength"), int):
        text = text[: schema["maxLength"]]
    return text


def _number(schema: Mapping[str, Any], default: float, *, integer: bool) -> int | float:
    value: float = default
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if isinstance(low, int | float):
        value = max(value, low + (1 if "exclusiveMinimum" in schema else 0))
    if isinstance(high, int | float):
        value = min(value, high - (1 if "exclusiveMaximum" in schema else 0))
    return int(value) if integer else float(value)


def _tool_name(tool: Mapping[str, Any]) -> str:
    return str(tool.get("name") or tool.get("type"))


def chosen_tools(
    tools: Sequence[Mapping[str, Any]] | None,
    choice: Mapping[str, Any] | None,
    prompt: str,
) -> list[Mapping[str, Any]]:
    """The client tools the reply calls (none when it answers in text)."""
    custom = [t for t in tools or () if t.get("type") in (None, "custom")]
    if not custom:
        return []
    kind = (choice or {}).get("type", "auto")
    if kind == "none":
        return []
    single = bool((choice or {}).get("disable_parallel_tool_use"))
    named = [t for t in custom if _tool_name(t) in prompt]
    if kind == "tool":
        return [t for t in custom if _tool_name(t) == (choice or {}).get("name")][:1]
    # auto calls a tool only when the request asks for it by name
    picked = (named or custom[:1]) if kind == "any" else named
    return picked[:1] if single else picked


def _tool_use_id(prompt: str, index: int) -> str:
    digest = hashlib.sha256(f"{prompt}\x00{index}".encode("utf-8", "surrogatepass")).digest()
    return "toolu_sim" + base64.b32encode(digest[:15]).decode("ascii").lower()


def _json_tokens(value: object) -> int:
    text = json.dumps(value, separators=(",", ":"))
    return max(1, (len(text) + 3) // 4)


# -- the reply -------------------------------------------------------------------------


def _apply_stop(text: str, stop_sequences: Sequence[str]) -> tuple[str, str | None]:
    hit: tuple[int, str] | None = None
    for seq in stop_sequences:
        at = text.find(seq) if seq else -1
        if at >= 0 and (hit is None or at < hit[0]):
            hit = (at, seq)
    if hit is None:
        return text, None
    return text[: hit[0]], hit[1]


def _thinking_block(prompt: str, budget: int) -> tuple[dict[str, Any], int]:
    if REDACTED_THINKING_TRIGGER in prompt:
        digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()
        data = base64.b64encode(b"sim-redacted:" + digest * 4).decode("ascii")
        return {"type": "redacted_thinking", "data": data}, 16
    words = ["Thinking", "about:", *prompt.split()[:QUOTE_WORDS]]
    words = [*words, *reply_words(prompt, THINKING_WORDS)[1:]][: max(1, min(budget, 64))]
    thinking = " ".join(words)
    return {
        "type": "thinking",
        "thinking": thinking,
        "signature": thinking_signature(thinking),
    }, len(words)


def generate(
    messages: Sequence[Mapping[str, Any]],
    max_tokens: int,
    stop_sequences: Sequence[str] = (),
    target_tokens: int | None = None,
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    tool_choice: Mapping[str, Any] | None = None,
    thinking_budget: int | None = None,
) -> Generated:
    blocks: list[dict[str, Any]] = []
    counts: list[int] = []
    left = max_tokens
    results = _tool_results(messages)
    prompt = last_user_text(messages)

    if thinking_budget is not None:
        block, spent = _thinking_block(prompt or " ".join(results), min(thinking_budget, left))
        blocks.append(block)
        counts.append(spent)
        left -= spent

    calls = [] if results else chosen_tools(tools, tool_choice, prompt)
    if calls:
        preface = (
            ""
            if (tool_choice or {}).get("type") in ("any", "tool")
            else (f"I'll use the {_tool_name(calls[0])} tool.")
        )
        uses = []
        for i, tool in enumerate(calls):
            tool_input = schema_instance(tool.get("input_schema"), prompt.split() or ["value"])
            uses.append(
                {
                    "type": "tool_use",
                    "id": _tool_use_id(prompt, i),
                    "name": _tool_name(tool),
                    "input": tool_input,
                }
            )
        need = len(preface.split()) + sum(_json_tokens(u["input"]) + 2 for u in uses)
        if need <= left:
            if preface:
                blocks.append({"type": "text", "text": preface})
                counts.append(len(preface.split()))
            for use in uses:
                blocks.append(use)
                counts.append(_json_tokens(use["input"]) + 2)
            return Generated(tuple(blocks), sum(counts), "tool_use", None, tuple(counts))

    source = ("Re: tool result: " + " ".join(results)) if results else prompt
    words = (
        ["Re:", "tool", "result:", *" ".join(results).split()][: target_tokens or 48]
        if results
        else reply_words(source, target_tokens)
    )
    stop_reason = "end_turn"
    if len(words) > left:
        words = words[: max(0, left)]
        stop_reason = "max_tokens"
    text, stop = _apply_stop(" ".join(words), stop_sequences)
    emitted = len(text.split())
    if stop is not None:
        emitted += 1  # the stop sequence itself was generated, then withheld
        stop_reason = "stop_sequence"
    else:
        emitted = len(words)
    if text:
        blocks.append({"type": "text", "text": text})
        counts.append(emitted)
    elif stop is not None:
        counts.append(emitted)
    return Generated(tuple(blocks), sum(counts), stop_reason, stop, tuple(counts))
