"""Background tasks that never die silently.

Every long-lived object that runs tasks owns one `Supervisor`: a task that fails
is logged with its traceback and reported to the owner's `on_failure`; stopping
waits a grace period for tasks to finish, then cancels the rest.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import logging
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any

log = logging.getLogger("pipeline.lifecycle.tasks")

#: How long cancelled tasks get to unwind before stopping gives up on them.
CANCEL_WAIT_S = 5.0


def _stack_of(task: asyncio.Task[Any]) -> str:
    out = io.StringIO()
    task.print_stack(file=out)
    return out.getvalue()


class Supervisor:
    def __init__(self, owner: str, on_failure: Callable[[BaseException], None] | None = None):
        self._owner = owner
        self._on_failure = on_failure
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        log.error(
            "background task failed",
            exc_info=exc,
            extra={"owner": self._owner, "task": task.get_name()},
        )
        if self._on_failure is not None and not self._stopping:
            self._on_failure(exc)

    async def stop(self, grace_s: float = 0.0) -> None:
        """Give running tasks `grace_s` to finish, then cancel the rest and wait for them."""
        self._stopping = True
        if not self._tasks:
            return
        pending: set[asyncio.Task[Any]] = set(self._tasks)
        if grace_s > 0:
            _, pending = await asyncio.wait(pending, timeout=grace_s)
        for task in pending:
            task.cancel()
        if not pending:
            return
        _, stuck = await asyncio.wait(pending, timeout=CANCEL_WAIT_S)
        for task in stuck:  # a bug: say where it is rather than hang the shutdown
            log.error(
                "a task did not stop when cancelled",
                extra={
                    "owner": self._owner,
                    "task": task.get_name(),
                    "stack": _stack_of(task),
                },
            )


class Running:
    """Work under way per partition, that a rebalance waits for before the
    partition's next owner reads it (a call to Claude, a batch result's outcome)."""

    def __init__(self) -> None:
        self._counts: collections.Counter[tuple[str, int]] = collections.Counter()
        self._ran = asyncio.Event()

    def add(self, tp: tuple[str, int]) -> None:
        self._counts[tp] += 1

    def done(self, tp: tuple[str, int]) -> None:
        self._counts[tp] -= 1
        if self._counts[tp] <= 0:
            del self._counts[tp]
        self._ran.set()

    @contextlib.contextmanager
    def on(self, tp: tuple[str, int]) -> Iterator[None]:
        self.add(tp)
        try:
            yield
        finally:
            self.done(tp)

    async def finish(self, tps: Iterable[tuple[str, int]], timeout_s: float) -> int:
        """Wait (at most `timeout_s`) for the work under way on `tps` to finish;
        returns how much is still running."""
        wanted = set(tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s

        def running() -> int:
            return sum(self._counts[tp] for tp in wanted)

        while running() and loop.time() < deadline:
            self._ran.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._ran.wait()
        return running()
