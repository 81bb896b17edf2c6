"""Deterministic replies tied to their request.

A reply quotes the start of the last user message, then continues with filler
words chosen by a hash of that message. Each word is one output token. Tests can
therefore tell which request a response belongs to, and a stop sequence placed
in the prompt is found in the reply.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_FILLER = (
    "kafka", "stream", "partner", "fair", "queue", "token", "bucket", "budget", "claude",
    "reply", "offset", "commit", "schedule", "weight", "latency", "retry", "backoff",
    "signal", "window", "share", "limit",
)  # fmt: skip

QUOTE_WORDS = 12


@dataclass(frozen=True)
class Generated:
    text: str
    output_tokens: int
    stop_reason: str  # end_turn | max_tokens | stop_sequence
    stop_sequence: str | None = None


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(
                str(b.get("text", ""))
                for b in content
                if isinstance(b, Mapping) and b.get("type") == "text"
            )
    return ""


def reply_words(prompt: str, target: int | None) -> list[str]:
    digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()
    length = target if target is not None else 16 + digest[0] % 49
    words = ["Re:", *prompt.split()[:QUOTE_WORDS]]
    i = 0
    while len(words) < length:
        words.append(_FILLER[digest[i % len(digest)] % len(_FILLER)])
        i += 1
    return words[:length] if length > 0 else []


def generate(
    messages: Sequence[Mapping[str, Any]],
    max_tokens: int,
    stop_sequences: Sequence[str] = (),
    target_tokens: int | None = None,
) -> Generated:
    words = reply_words(last_user_text(messages), target_tokens)
    stop_reason = "end_turn"
    if len(words) > max_tokens:
        words = words[:max_tokens]
        stop_reason = "max_tokens"
    text = " ".join(words)
    if stop_sequences:
        hit: tuple[int, str] | None = None
        for seq in stop_sequences:
            at = text.find(seq) if seq else -1
            if at >= 0 and (hit is None or at < hit[0]):
                hit = (at, seq)
        if hit is not None:
            text = text[: hit[0]]
            emitted = len(text.split())
            # the stop sequence itself was generated, then withheld
            return Generated(text, emitted + 1, "stop_sequence", hit[1])
    return Generated(text, len(words), stop_reason)
