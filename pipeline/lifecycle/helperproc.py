"""A helper process for work that would hold the GIL of an event loop's process.

json and fastavro parse without releasing the GIL, so a thread does not keep the
loop free; a process does. `HelperProcess` is one such process (spawned, not
forked: the processes that use it run threads), started on first use, replaced
after it dies, and gone within `ORPHAN_CHECK_S` of its parent, even one killed
with SIGKILL. The worker's examiner (`pipeline.lifecycle.examiner`) and the simulator's
reader of large bodies (`pipeline.dev.sim.heavy`) each run one.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

#: How often a helper checks that the process that started it is still alive
#: (one killed with SIGKILL cannot stop it).
ORPHAN_CHECK_S = 1.0

_T = TypeVar("_T")


def _pid() -> int:
    return os.getpid()


def _watch_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="helper-orphan-check", daemon=True).start()


class HelperProcess:
    """One helper process; `run` raises BrokenProcessPool when it dies under a
    call, and the next call starts another."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def started(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_watch_parent,
                initargs=(os.getpid(),),
            )
        return self._pool

    async def start(self) -> int:
        """Start the helper and wait until it can work: its process id."""
        return await self.run(_pid)

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(*args)` in the helper (`fn` a module-level function)."""
        pool = self.started()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except BrokenProcessPool:
            if self._pool is pool:
                self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
