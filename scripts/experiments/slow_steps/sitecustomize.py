"""Log every event-loop step over 15 ms, with the task it ran: which work holds a
worker's loop (or Faust's consumer thread's) long enough to stall the others.

Load it into a worker on asyncio's own loop (uvloop's steps cannot be wrapped):

    PYTHONPATH=scripts/experiments/slow_steps PIPELINE_EVENT_LOOP=asyncio claude-pipeline worker

Each slow step is one stderr line: `SLOW <unix time> <ms> ms <thread> <coroutine chain>`.
"""

from __future__ import annotations

import asyncio.events
import sys
import threading
import time
from typing import Any

SLOW_S = 0.015
_run = asyncio.events.Handle._run


def _described(callback: Any) -> str:
    get_coro = getattr(getattr(callback, "__self__", None), "get_coro", None)
    if get_coro is None:
        return repr(callback)[:120]
    names = []
    coro = get_coro()
    while coro is not None and len(names) < 6:
        names.append(getattr(coro, "__qualname__", "?"))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return ">".join(names)


def _timed_run(self: asyncio.events.Handle) -> None:
    start = time.perf_counter()
    _run(self)
    took = time.perf_counter() - start
    if took > SLOW_S:
        sys.stderr.write(
            f"SLOW {time.time():.3f} {took * 1000:.0f} ms {threading.current_thread().name} "
            f"{_described(self._callback)}\n"
        )


asyncio.events.Handle._run = _timed_run  # type: ignore[method-assign]
