"""Heavy records are decoded and checked in a helper process.

fastavro and json hold the GIL: a request of ten thousand messages (1.5 MB) took
20 ms to decode, 8 ms to read and count and 15 ms to encode for Claude, and in a
thread that still stalls the event loop and Faust's consumer thread for every
other partner. The examiner process does that work for records over
`HEAVY_BYTES` and sends back the `Examined` result (the decoded request, its
params and their JSON body), which takes about 4 ms to unpickle.

Only the pure part moves (`intake.examine_value`): the signature is checked
before (in a thread: hashing releases the GIL) and everything that reads the
worker's state after, in the worker. A value that kills the helper (a decoder
crash on hostile bytes) costs that record a `schema_error` dead letter and the
helper a restart, never the worker.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from pipeline.errors import SchemaError
from pipeline.intake import Examined, examine_value
from pipeline.partners import Partner

log = logging.getLogger("pipeline.examiner")

#: How often the helper checks that the worker that started it is still alive
#: (a worker killed with SIGKILL cannot stop it).
ORPHAN_CHECK_S = 1.0


def _watch_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="examiner-orphan-check", daemon=True).start()


def _ready() -> int:
    return os.getpid()


def _examine(
    writer_schema: Any, reader_schema: Any, data: bytes, offset: int, partner: Partner
) -> Examined | SchemaError:
    try:
        return examine_value(writer_schema, reader_schema, data, offset, partner, encode_body=True)
    except SchemaError as exc:  # returned, not raised: no traceback to pickle
        return exc


class Examiner:
    """One helper process per worker, started when the worker starts and again
    after it dies."""

    def __init__(self, work: Callable[..., Examined | SchemaError] | None = None) -> None:
        #: What the helper runs (a test makes it crash); a module-level function.
        self._work = work or _examine
        self._pool: ProcessPoolExecutor | None = None

    def _started(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                # Not fork: the worker has threads (Faust's consumer, the producer's).
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_watch_parent,
                initargs=(os.getpid(),),
            )
        return self._pool

    async def start(self) -> None:
        """Start the helper and wait until it can work."""
        loop = asyncio.get_running_loop()
        pid = await loop.run_in_executor(self._started(), _ready)
        log.info("examiner process ready", extra={"pid": pid})

    async def examine(
        self, writer_schema: Any, reader_schema: Any, data: bytes, offset: int, partner: Partner
    ) -> Examined | SchemaError:
        loop = asyncio.get_running_loop()
        pool = self._started()
        try:
            return await loop.run_in_executor(
                pool, self._work, writer_schema, reader_schema, data, offset, partner
            )
        except BrokenProcessPool:
            # This value, or one beside it, killed the helper: a new one for the next.
            if self._pool is pool:
                self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            log.exception("examiner process died; starting another", extra={"bytes": len(data)})
            return SchemaError(f"decoding a value of {len(data)} bytes killed the decoder process")

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
