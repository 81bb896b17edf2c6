"""One cache breakpoint on a long stable prefix, for a partner that opted in
(`partners set ID --auto-cache on`) and whose request placed none.

The prefix Claude caches is tools, then system, then messages; the part a
partner's requests share is usually tools and system. A breakpoint on the last
system block (else the last tool) caches all of it: the first request writes it
at 1.25x input, later ones within five minutes read it at 0.1x. Requests with a
breakpoint of their own are the partner's choice and are left alone; so is a
prefix too short to be worth a write.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.limits import tokens

#: The shortest prefix a breakpoint is placed on: Claude caches nothing shorter
#: (1,024 tokens for most models, more for some: then it is simply not cached).
MIN_PREFIX_TOKENS = 1_024
EPHEMERAL = {"type": "ephemeral"}


def with_breakpoint(params: Mapping[str, Any]) -> dict[str, Any] | None:
    """`params` with a breakpoint on its stable prefix, or None when none is placed."""
    if tokens.cache_write_ttls(params):
        return None  # the partner placed its own
    system, tools = params.get("system"), list(params.get("tools") or ())
    if not system and not tools:
        return None
    if tokens.count_request((), system, tools) < MIN_PREFIX_TOKENS:
        return None
    out = dict(params)
    if isinstance(system, str) and system:
        out["system"] = [{"type": "text", "text": system, "cache_control": EPHEMERAL}]
    elif isinstance(system, list) and system and isinstance(system[-1], Mapping):
        out["system"] = [*system[:-1], {**system[-1], "cache_control": EPHEMERAL}]
    elif tools and isinstance(tools[-1], Mapping):
        out["tools"] = [*tools[:-1], {**tools[-1], "cache_control": EPHEMERAL}]
    else:
        return None
    return out
