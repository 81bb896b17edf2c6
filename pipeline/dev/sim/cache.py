"""Prompt caching as the API bills it: per breakpoint, with 5-minute and 1-hour TTLs.

Every block marked with `cache_control` (at most four; a top-level `cache_control`
marks the last block) is a breakpoint: the request prefix up to it can be cached.
A request reads the longest cached prefix and writes each longer breakpoint's new
tokens, billed by that breakpoint's TTL (a 1-hour write costs 2x input, a
5-minute one 1.25x). A hit refreshes the entry's TTL, as on the real API.
Prefixes shorter than the model's minimum are not cached.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.dev.sim.limits import Clock
from pipeline.limits import tokens

ONE_HOUR_S = 3_600.0


@dataclass(frozen=True)
class CacheUsage:
    input_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    #: The part of the cache writes made with the 1-hour TTL.
    cache_creation_1h_input_tokens: int = 0

    @property
    def cache_creation_5m_input_tokens(self) -> int:
        return self.cache_creation_input_tokens - self.cache_creation_1h_input_tokens


@dataclass(frozen=True)
class Breakpoint:
    digest: str
    tokens: int  # the prefix's tokens, up to and including the marked block
    ttl: str  # "5m" or "1h"


def breakpoints(
    namespace: str,
    model: str,
    system: object,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[object] | None,
    top_level: Mapping[str, Any] | None = None,
) -> list[Breakpoint]:
    """Each cacheable prefix of the request, shortest first."""
    parts = tokens.segments(messages, system, tools)
    marks = [cc for _, cc, _ in parts]
    if top_level is not None and marks and marks[-1] is None:
        marks[-1] = top_level  # automatic caching marks the last block
    out: list[Breakpoint] = []
    hasher = hashlib.sha256(json.dumps([namespace, model]).encode())
    total = 0
    for (count, _, part), mark in zip(parts, marks, strict=True):
        total += count
        hasher.update(json.dumps(part, sort_keys=True, separators=(",", ":")).encode())
        if mark is not None:
            ttl = mark.get("ttl", "5m")
            out.append(Breakpoint(hasher.copy().hexdigest(), total, "1h" if ttl == "1h" else "5m"))
    return out


class PromptCache:
    def __init__(
        self, ttl_s: float, min_tokens: int, clock: Clock, ttl_1h_s: float = ONE_HOUR_S
    ) -> None:
        self._ttl = {"5m": ttl_s, "1h": ttl_1h_s}
        self._min_tokens = min_tokens
        self._clock = clock
        self._expiry: dict[str, tuple[float, str]] = {}

    def usage(
        self,
        namespace: str,
        model: str,
        system: object,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[object] | None,
        total_input: int,
        top_level: Mapping[str, Any] | None = None,
    ) -> CacheUsage:
        marks = [
            b
            for b in breakpoints(namespace, model, system, messages, tools, top_level)
            if b.tokens >= self._min_tokens
        ]
        if not marks:
            return CacheUsage(input_tokens=total_input)
        now = self._clock()
        hit = -1
        for i, mark in enumerate(marks):
            entry = self._expiry.get(mark.digest)
            if entry is not None and entry[0] > now:
                hit = i
        read = marks[hit].tokens if hit >= 0 else 0
        if hit >= 0:
            ttl = self._expiry[marks[hit].digest][1]
            self._expiry[marks[hit].digest] = (now + self._ttl[ttl], ttl)
        written = written_1h = 0
        covered = read
        for mark in marks[hit + 1 :]:
            new = mark.tokens - covered
            written += new
            if mark.ttl == "1h":
                written_1h += new
            covered = mark.tokens
            self._expiry[mark.digest] = (now + self._ttl[mark.ttl], mark.ttl)
        if len(self._expiry) > 100_000:
            self._prune(now)
        return CacheUsage(
            input_tokens=max(0, total_input - covered),
            cache_creation_input_tokens=written,
            cache_read_input_tokens=read,
            cache_creation_1h_input_tokens=written_1h,
        )

    def _prune(self, now: float) -> None:
        self._expiry = {k: v for k, v in self._expiry.items() if v[0] > now}

    def clear(self) -> None:
        self._expiry.clear()
