"""Token counts of Messages API requests: one estimate, one upper bound.

The estimate is what the simulator bills and what the scheduler plans with, so the
numbers the pipeline plans with are the numbers "Claude" charges. The real
tokenizer is not public: text is about four characters per token (Anthropic's own
rule of thumb); an image costs about width x height / 750 tokens after its long
edge is scaled down to 1,568 px (Anthropic's documented formula, read from the
image header); a PDF page costs its text plus its page image.

The upper bound is what budgets reserve: a number the real tokenizer cannot
exceed, so no estimate error can overrun a budget, yet without absurd
reservations (a 1 MB image reserves its pixels' tokens, not a million). Every
text token is at least one UTF-8 byte; an image at most what its scaled pixels
cost; a PDF page at most `PDF_PAGE_TOKENS_MAX`; what cannot be seen before the call
(a URL or file-id document, a PDF whose pages are hidden in compressed object
streams) at most the context window.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pipeline.limits import media
from pipeline.messages import walk_blocks

CHARS_PER_TOKEN = 4
BASE_TOKENS = 3  # every request pays a small fixed framing cost
MESSAGE_OVERHEAD = 4  # role markers around each message
SYSTEM_OVERHEAD = 3
#: The tool-use system prompt the API adds when a request defines tools.
TOOLS_OVERHEAD = 346
TOOLS_OVERHEAD_MAX = 1_000

IMAGE_MAX_EDGE = 1_568
IMAGE_PIXELS_PER_TOKEN = 750
#: The most one image can cost: a square at the largest edge the API keeps.
IMAGE_MAX_TOKENS = math.ceil(IMAGE_MAX_EDGE * IMAGE_MAX_EDGE / IMAGE_PIXELS_PER_TOKEN)
#: An image whose size cannot be read before the call (URL, file id): a typical one.
IMAGE_TOKENS = 1_600
#: A PDF page: its extracted text plus its page image (the simulator's price).
PDF_PAGE_TOKENS = 1_500
#: The most one PDF page can cost: dense text plus the largest page image.
PDF_PAGE_TOKENS_MAX = 3_000 + IMAGE_MAX_TOKENS
#: A URL or file-id document (the simulator cannot fetch it): one page.
DOCUMENT_TOKENS = PDF_PAGE_TOKENS
#: No request's input can exceed the largest context window of any model.
CONTEXT_WINDOW_MAX = 1_000_000
#: No model writes more output than this in one call (Claude refuses a larger
#: max_tokens); rate limits are charged at most this much output per request.
MAX_OUTPUT_TOKENS = 128_000

#: (tokens, cache_control or None, the part itself): a request in API order,
#: split where a cache breakpoint may sit (tools, then system, then messages).
Segment = tuple[int, Mapping[str, Any] | None, object]


def count_text(text: str) -> int:
    """Tokens in a piece of text: ceil(chars / 4)."""
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def _json_text(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def image_tokens(width: int, height: int) -> int:
    """Tokens of a width x height image, after the long edge is scaled to 1,568 px."""
    if width <= 0 or height <= 0:
        return 0
    scale = min(1.0, IMAGE_MAX_EDGE / max(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    return math.ceil(w * h / IMAGE_PIXELS_PER_TOKEN)


def _source_bytes(source: Mapping[str, Any], full: bool) -> bytes:
    data = source.get("data")
    if not isinstance(data, str):
        return b""
    if full:
        try:
            return base64.b64decode(data, validate=True)
        except ValueError:
            return b""
    return media.b64_prefix(data)


def _image_size(block: Mapping[str, Any]) -> tuple[int, int] | None:
    source = block.get("source")
    if not isinstance(source, Mapping) or source.get("type") != "base64":
        return None
    return media.image_size(_source_bytes(source, full=False))


def _pdf_pages(source: Mapping[str, Any]) -> int | None:
    """None when the page count is not certain (the bound is then the worst case)."""
    return media.pdf_pages(_source_bytes(source, full=True))


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
    if kind == "image":
        size = _image_size(block)
        return image_tokens(*size) if size else IMAGE_TOKENS
    if kind == "document":
        return _count_document(block)
    if kind == "tool_result":
        return count_content(block.get("content"))
    if kind == "search_result":
        head = count_text(f"{block.get('title', '')} {block.get('source', '')}")
        return head + count_content(block.get("content"))
    if kind == "thinking":
        thinking = block.get("thinking")
        return count_text(thinking) if isinstance(thinking, str) else 0
    # tool_use, redacted_thinking and anything else: bill the JSON it carries
    return count_text(_json_text(block))


def _count_document(block: Mapping[str, Any]) -> int:
    source = block.get("source")
    if not isinstance(source, Mapping):
        return 0
    extra = count_text(f"{block.get('title') or ''}{block.get('context') or ''}")
    kind = source.get("type")
    if kind == "base64":
        return extra + max(1, _pdf_pages(source) or 1) * PDF_PAGE_TOKENS
    if kind == "text":
        data = source.get("data")
        return extra + (count_text(data) if isinstance(data, str) else 0)
    if kind == "content":
        return extra + count_content(source.get("content"))
    return extra + DOCUMENT_TOKENS


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


def count_tool(tool: object) -> int:
    return count_text(_json_text(tool))


def count_tools(tools: Iterable[object] | None) -> int:
    tools = list(tools or ())
    if not tools:
        return 0
    return TOOLS_OVERHEAD + sum(count_tool(t) for t in tools)


def _cc(block: object) -> Mapping[str, Any] | None:
    if isinstance(block, Mapping) and isinstance(block.get("cache_control"), Mapping):
        return block["cache_control"]  # type: ignore[no-any-return]
    return None


def segments(
    messages: Sequence[Mapping[str, Any]],
    system: object = None,
    tools: Iterable[object] | None = None,
) -> list[Segment]:
    """The request's tokens in API order, one segment per block that can be a breakpoint."""
    out: list[Segment] = [(BASE_TOKENS, None, "request")]
    tools = list(tools or ())
    if tools:
        out.append((TOOLS_OVERHEAD, None, "tools"))
        out.extend((count_tool(t), _cc(t), t) for t in tools)
    if isinstance(system, list) and system:
        out.append((SYSTEM_OVERHEAD, None, "system"))
        out.extend((count_block(b), _cc(b), b) for b in system)
    elif isinstance(system, str) and system:
        out.append((count_system(system), None, system))
    for message in messages:
        out.append((MESSAGE_OVERHEAD, None, message.get("role")))
        content = message.get("content")
        if isinstance(content, list):
            out.extend((count_block(b), _cc(b), b) for b in content)
        else:
            out.append((count_content(content), None, content))
    return out


def count_request(
    messages: Sequence[Mapping[str, Any]],
    system: object = None,
    tools: Iterable[object] | None = None,
) -> int:
    """Input tokens of a Messages API request (what `count_tokens` returns)."""
    return sum(n for n, _, _ in segments(messages, system, tools))


def count_params(params: Mapping[str, Any]) -> int:
    return count_request(params.get("messages") or (), params.get("system"), params.get("tools"))


# -- the upper bound --------------------------------------------------------------------


def _bytes(value: object) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    return len(_json_text(value).encode("utf-8", "surrogatepass"))


def bound_block(block: object) -> int:
    """At most this many tokens, whatever the real tokenizer does."""
    if isinstance(block, str) or not isinstance(block, Mapping):
        return _bytes(block)
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        citations = block.get("citations")
        return _bytes(block["text"]) + (_bytes(citations) if citations else 0)
    if kind == "image":
        size = _image_size(block)
        return min(IMAGE_MAX_TOKENS, image_tokens(*size)) if size else IMAGE_MAX_TOKENS
    if kind == "document":
        return _bound_document(block)
    if kind == "tool_result":
        content = block.get("content")
        inner = sum(bound_block(b) for b in content) if isinstance(content, list) else 0
        return inner + _bytes(content if isinstance(content, str) else "") + 16
    return _bytes(block)


def _bound_document(block: Mapping[str, Any]) -> int:
    source = block.get("source")
    head = _bytes(block.get("title") or "") + _bytes(block.get("context") or "") + 16
    if not isinstance(source, Mapping):
        return head + _bytes(block)
    kind = source.get("type")
    if kind == "base64":
        pages = _pdf_pages(source)
        return head + (pages * PDF_PAGE_TOKENS_MAX if pages else CONTEXT_WINDOW_MAX)
    if kind == "text":
        return head + _bytes(source.get("data") or "")
    if kind == "content":
        content = source.get("content")
        if isinstance(content, list):
            return head + sum(bound_block(b) for b in content)
        return head + _bytes(content or "")
    return CONTEXT_WINDOW_MAX  # a URL or a file: not visible before the call


def _bound_content(content: object) -> int:
    if isinstance(content, list):
        return sum(bound_block(b) for b in content)
    return _bytes(content or "")


def upper_bound_params(params: Mapping[str, Any]) -> int:
    """Input tokens the request cannot exceed (budgets reserve this)."""
    total = BASE_TOKENS
    tools = params.get("tools")
    if tools:
        total += TOOLS_OVERHEAD_MAX + sum(_bytes(t) for t in tools)
    system = params.get("system")
    if system:
        total += SYSTEM_OVERHEAD + _bound_content(system)
    for message in params.get("messages") or ():
        content = message.get("content") if isinstance(message, Mapping) else message
        total += MESSAGE_OVERHEAD + _bound_content(content)
        if total >= CONTEXT_WINDOW_MAX:
            return CONTEXT_WINDOW_MAX
    return min(total, CONTEXT_WINDOW_MAX)


def upper_bound_request(
    messages: Sequence[Mapping[str, Any]],
    system: object = None,
    tools: Iterable[object] | None = None,
) -> int:
    params: dict[str, Any] = {"messages": messages, "system": system}
    if tools:
        params["tools"] = list(tools)
    return upper_bound_params(params)


def cache_write_ttls(params: Mapping[str, Any]) -> set[str]:
    """The TTLs of every cache breakpoint in a request ("5m" when none is named)."""
    ttls: set[str] = set()

    def note(item: object) -> None:
        cc = _cc(item)
        if cc is not None:
            ttl = cc.get("ttl")
            ttls.add(ttl if isinstance(ttl, str) else "5m")

    note(params)
    for tool in params.get("tools") or ():
        note(tool)
    walk_blocks(params, lambda block, path: note(block))
    return ttls
