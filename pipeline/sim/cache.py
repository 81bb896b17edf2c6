"""Prompt caching: a prefix marked with `cache_control` is written once, then read.

The first request carrying a prefix is billed as a cache write; the same prefix
within the TTL (refreshed on every hit, as on the real API) is billed as a read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline import tokens
from pipeline.sim.limits import Clock


@dataclass(frozen=True)
class CacheUsage:
    input_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


def _has_cache_control(block: object) -> bool:
    return isinstance(block, Mapping) and block.get("cache_control") is not None


def cached_prefix(
    system: object, messages: Sequence[Mapping[str, Any]], tools: Sequence[object] | None
) -> tuple[list[object], int] | None:
    """The request prefix up to the last `cache_control` marker and its token count."""
    parts: list[object] = []
    marked: tuple[int, int] | None = None  # (len(parts), tokens so far)
    count = tokens.BASE_TOKENS
    for tool in tools or ():
        parts.append(tool)
        count += tokens.count_tools([tool])
        if _has_cache_control(tool):
            marked = (len(parts), count)
    if isinstance(system, list):
        count += tokens.SYSTEM_OVERHEAD
        for block in system:
            parts.append(block)
            count += tokens.count_block(block)
            if _has_cache_control(block):
                marked = (len(parts), count)
    elif isinstance(system, str) and system:
        parts.append(system)
        count += tokens.count_system(system)
    for message in messages:
        content = message.get("content")
        count += tokens.MESSAGE_OVERHEAD
        parts.append(message.get("role"))
        if isinstance(content, list):
            for block in content:
                parts.append(block)
                count += tokens.count_block(block)
                if _has_cache_control(block):
                    marked = (len(parts), count)
        else:
            parts.append(content)
            count += tokens.count_content(content)
    if marked is None:
        return None
    return parts[: marked[0]], marked[1]


class PromptCache:
    def __init__(self, ttl_s: float, min_tokens: int, clock: Clock) -> None:
        self._ttl = ttl_s
        self._min_tokens = min_tokens
        self._clock = clock
        self._expiry: dict[str, float] = {}

    def usage(
        self,
        namespace: str,
        model: str,
        system: object,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[object] | None,
        total_input: int,
    ) -> CacheUsage:
        prefix = cached_prefix(system, messages, tools)
        if prefix is None or prefix[1] < self._min_tokens:
            return CacheUsage(input_tokens=total_input)
        parts, prefix_tokens = prefix
        canonical = json.dumps([namespace, model, parts], sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        now = self._clock()
        expiry = self._expiry.get(digest)
        self._expiry[digest] = now + self._ttl
        if len(self._expiry) > 100_000:
            self._prune(now)
        rest = max(0, total_input - prefix_tokens)
        if expiry is not None and expiry > now:
            return CacheUsage(input_tokens=rest, cache_read_input_tokens=prefix_tokens)
        return CacheUsage(input_tokens=rest, cache_creation_input_tokens=prefix_tokens)

    def _prune(self, now: float) -> None:
        self._expiry = {k: v for k, v in self._expiry.items() if v > now}

    def clear(self) -> None:
        self._expiry.clear()
