"""One deterministic token-count approximation.

The simulator bills with it and the worker estimates request cost with it, so
the numbers the scheduler plans with are the numbers "Claude" charges. The real
tokenizer is not public; roughly four characters per token is what Anthropic's
own documentation suggests for English text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

CHARS_PER_TOKEN = 4
BASE_TOKENS = 3  # every request pays a small fixed framing cost
MESSAGE_OVERHEAD = 4  # role markers around each message
SYSTEM_OVERHEAD = 3
IMAGE_TOKENS = 1_600  # a typical ~1.1 megapixel image


def count_text(text: str) -> int:
    """Tokens in a piece of text: ceil(chars / 4)."""
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def count_block(block: object) -> int:
    """Tokens in one content block (a string or a block dict of any known type)."""
    if isinstance(block, str):
        return count_text(block)
    if not isinstance(block, Mapping):
        return 0
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        return count_text(text) if isinstance(text, str) else 0
    if kind in ("image", "document"):
        return IMAGE_TOKENS
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, str):
            return count_text(content)
        if isinstance(content, list):
            return sum(count_block(b) for b in content)
        return 0
    # tool_use and anything else: bill the JSON it carries
    return count_text(json.dumps(block, separators=(",", ":"), sort_keys=True))


def count_content(content: object) -> int:
    if isinstance(content, str):
        return count_text(content)
    if isinstance(content, list):
        return sum(count_block(b) for b in content)
    return 0


def count_system(system: object) -> int:
    if system is None or system == "" or system == []:
        return 0
    return SYSTEM_OVERHEAD + count_content(system)


def count_message(message: Mapping[str, Any]) -> int:
    return MESSAGE_OVERHEAD + count_content(message.get("content"))


def count_tools(tools: Iterable[object] | None) -> int:
    if not tools:
        return 0
    return sum(count_text(json.dumps(t, separators=(",", ":"), sort_keys=True)) for t in tools)


def count_request(
    messages: Sequence[Mapping[str, Any]],
    system: object = None,
    tools: Iterable[object] | None = None,
) -> int:
    """Input tokens of a Messages API request (what `count_tokens` returns)."""
    return (
        BASE_TOKENS
        + count_system(system)
        + count_tools(tools)
        + sum(count_message(m) for m in messages)
    )


def upper_bound_request(
    messages: Sequence[Mapping[str, Any]],
    system: object = None,
    tools: Iterable[object] | None = None,
) -> int:
    """A bound the real tokenizer cannot exceed: every token is at least one
    UTF-8 byte. Budgets reserve with it, so no estimate error can overrun them."""

    def size(content: object) -> int:
        if isinstance(content, str):
            return len(content.encode("utf-8", "surrogatepass"))
        return len(json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode())

    total = BASE_TOKENS + size(system) * (system is not None) + SYSTEM_OVERHEAD
    total += sum(MESSAGE_OVERHEAD + size(m.get("content")) for m in messages)
    if tools:
        total += sum(size(t) for t in tools)
    return total
