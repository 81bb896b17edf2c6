"""Content blocks as the API judges them: which role may send which block, images and
documents, tool_use/tool_result pairing, cache breakpoints, thinking signatures."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.dev.sim.errors import invalid
from pipeline.limits import media

#: Which block types each role may send.
USER_BLOCKS = frozenset(
    {"text", "image", "document", "search_result", "tool_result", "container_upload"}
)


#: Server tool results: the id of the server_tool_use they answer, and a content.
SERVER_TOOL_RESULTS = frozenset(
    {
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
    }
)


ASSISTANT_BLOCKS = (
    frozenset({"text", "tool_use", "thinking", "redacted_thinking", "server_tool_use"})
    | SERVER_TOOL_RESULTS
)


ALL_BLOCKS = USER_BLOCKS | ASSISTANT_BLOCKS


MAX_IMAGE_BYTES = 5 * 1024 * 1024


MAX_IMAGES = 100


MAX_IMAGE_EDGE = 8_000


MAX_CACHE_BREAKPOINTS = 4


CACHE_TTLS = ("5m", "1h")


#: Signs the simulator's thinking blocks, so a modified one can be refused as the API does.
_THINKING_KEY = b"claude-pipeline simulator thinking signatures"


def thinking_signature(thinking: str) -> str:
    digest = hmac.new(_THINKING_KEY, thinking.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return base64.b64encode(b"sim-thinking-v1:" + digest.digest()).decode("ascii")


def b64_data(data: object, where: str) -> bytes:
    if not isinstance(data, str):
        raise invalid(f"{where}.data: Input should be a valid string")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{where}.data: invalid base64 data") from None


def check_cache_control(value: object, where: str) -> str | None:
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


class Counts:
    """What the whole request holds, checked once all blocks are seen."""

    def __init__(self) -> None:
        self.images = 0
        self.breakpoints: list[tuple[str, str]] = []  # (where, ttl) in request order

    def breakpoint(self, value: object, where: str) -> None:
        ttl = check_cache_control(value, where)
        if ttl is not None:
            self.breakpoints.append((where, ttl))


def _check_image(block: Mapping[str, Any], where: str, counts: Counts) -> None:
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
        data = b64_data(source.get("data"), f"{where}.source.base64")
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


def _check_document(block: Mapping[str, Any], where: str, counts: Counts) -> None:
    source = block.get("source")
    if not isinstance(source, Mapping):
        raise invalid(f"{where}.source: Field required")
    kind = source.get("type")
    if kind == "base64":
        if source.get("media_type") != "application/pdf":
            raise invalid(f"{where}.source.base64.media_type: Input should be 'application/pdf'")
        data = b64_data(source.get("data"), f"{where}.source.base64")
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
                check_block(item, item_where, "user", counts)
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


def need_str(block: Mapping[str, Any], key: str, where: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise invalid(f"{where}.{key}: Field required")
    return value


def check_block(block: object, where: str, role: str, counts: Counts) -> None:
    if not isinstance(block, Mapping):
        raise invalid(f"{where}: Input should be a valid dictionary or object")
    kind = block.get("type")
    if kind not in ALL_BLOCKS:
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
        need_str(block, "id", where)
        need_str(block, "name", where)
        if not isinstance(block.get("input"), Mapping):
            raise invalid(f"{where}.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        need_str(block, "tool_use_id", where)
        content = block.get("content")
        if isinstance(content, list):
            for i, item in enumerate(content):
                if isinstance(item, Mapping) and item.get("type") == "tool_reference":
                    need_str(item, "tool_name", f"{where}.content.{i}")  # tool search's
                    counts.breakpoint(item.get("cache_control"), f"{where}.content.{i}")
                    continue
                check_block(item, f"{where}.content.{i}", "user", counts)
        elif content is not None and not isinstance(content, str):
            raise invalid(f"{where}.content: Input should be a valid string or list")
        if block.get("is_error") is not None and not isinstance(block["is_error"], bool):
            raise invalid(f"{where}.is_error: Input should be a valid boolean")
    elif kind == "thinking":
        thinking = need_str(block, "thinking", where)
        signature = need_str(block, "signature", where)
        if not hmac.compare_digest(signature, thinking_signature(thinking)):
            raise invalid(f"{where}: Invalid `signature` in `thinking` block")
    elif kind == "redacted_thinking":
        need_str(block, "data", where)
    elif kind == "container_upload":
        need_str(block, "file_id", where)
    elif kind in SERVER_TOOL_RESULTS:
        need_str(block, "tool_use_id", where)
        if "content" not in block:
            raise invalid(f"{where}.content: Field required")
    elif kind == "search_result":
        need_str(block, "source", where)
        need_str(block, "title", where)
        content = block.get("content")
        if not isinstance(content, list):
            raise invalid(f"{where}.content: Field required")
        for i, item in enumerate(content):
            if not isinstance(item, Mapping) or item.get("type") != "text":
                raise invalid(f"{where}.content.{i}: Input should be a text block")
            check_block(item, f"{where}.content.{i}", "user", counts)


def check_content(index: int, role: str, content: object, counts: Counts) -> None:
    where = f"messages.{index}.content"
    if isinstance(content, str):
        if not content:
            raise invalid(f"{where}: text content blocks must be non-empty")
        return
    if not isinstance(content, list):
        raise invalid(f"{where}: Input should be a valid list")
    for j, block in enumerate(content):
        check_block(block, f"{where}.{j}", role, counts)


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


def check_pairing(messages: Sequence[Mapping[str, Any]]) -> None:
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


def check_breakpoints(counts: Counts) -> None:
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
