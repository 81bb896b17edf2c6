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

import logging
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from pipeline.errors import SchemaError
from pipeline.lifecycle.helperproc import HelperProcess
from pipeline.lifecycle.intake import Examined, examine_value
from pipeline.partners import Partner

log = logging.getLogger("pipeline.lifecycle.examiner")


def _examine(
    writer_schema: Any, reader_schema: Any, data: bytes, offset: int, partner: Partner
) -> Examined | SchemaError:
    try:
        examined = examine_value(
            writer_schema, reader_schema, data, offset, partner, encode_body=True
        )
        return examined.without_content()
    except SchemaError as exc:  # returned, not raised: no traceback to pickle
        return exc


class Examiner:
    """One helper process per worker, started when the worker starts and again
    after it dies."""

    def __init__(self, work: Callable[..., Examined | SchemaError] | None = None) -> None:
        #: What the helper runs (a test makes it crash); a module-level function.
        self._work = work or _examine
        self._helper = HelperProcess()

    def _started(self) -> ProcessPoolExecutor:
        return self._helper.started()

    async def start(self) -> None:
        """Start the helper and wait until it can work."""
        pid = await self._helper.start()
        log.info("examiner process ready", extra={"pid": pid})

    async def examine(
        self, writer_schema: Any, reader_schema: Any, data: bytes, offset: int, partner: Partner
    ) -> Examined | SchemaError:
        try:
            return await self._helper.run(
                self._work, writer_schema, reader_schema, data, offset, partner
            )
        except BrokenProcessPool:
            # This value, or one beside it, killed the helper: a new one for the next.
            log.exception("examiner process died; starting another", extra={"bytes": len(data)})
            return SchemaError(f"decoding a value of {len(data)} bytes killed the decoder process")

    def close(self) -> None:
        self._helper.close()
