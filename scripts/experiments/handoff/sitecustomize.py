"""Where a record's time goes before the worker's event loop sees it: loaded into
every process of a latency benchmark run through PYTHONPATH (see
scripts/experiments/README.md), active only where HANDOFF_OUT is set.

For each request record it notes, relative to the record's own timestamp:
- `created`: when aiokafka parsed the fetch response that carried it (in Faust's
  consumer thread),
- `thread`: when Faust's consumer thread handed the batch back,
- `main`: when the event loop had it (after mode's thread hand-off),
and for each aiokafka fetcher the start and end of every fetch request.
Written as JSON to HANDOFF_OUT.<pid> every 500 records.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

if os.environ.get("HANDOFF_OUT"):
    from aiokafka.consumer import fetcher as afetch
    from faust.transport.drivers import aiokafka as driver

    lags: dict[str, Any] = {"created": [], "thread": [], "main": [], "cycles": {}}
    out = f"{os.environ['HANDOFF_OUT']}.{os.getpid()}"

    def _requests(records: Any) -> list[Any]:
        return [r for rs in records.values() for r in rs if r.topic.startswith("claude.requests")]

    fetch_records = driver.AIOKafkaConsumerThread._fetch_records

    async def _fetch_records(self: Any, consumer: Any, *args: Any, **kwargs: Any) -> Any:
        buffered = {tp: r._created for tp, r in list(consumer._fetcher._records.items())}
        records = await fetch_records(self, consumer, *args, **kwargs)
        now_ms, mono = time.time() * 1000, time.monotonic()
        for tp, rs in records.items():
            for r in rs:
                if r.topic.startswith("claude.requests"):
                    lags["thread"].append(now_ms - r.timestamp)
                    at = buffered.get(tp, mono)
                    lags["created"].append(now_ms - r.timestamp - (mono - at) * 1000)
        return records

    getmany = driver.AIOKafkaConsumerThread.getmany

    async def _getmany(self: Any, *args: Any, **kwargs: Any) -> Any:
        records = await getmany(self, *args, **kwargs)
        now_ms = time.time() * 1000
        before = len(lags["main"])
        lags["main"].extend(now_ms - r.timestamp for r in _requests(records))
        if before // 500 != len(lags["main"]) // 500:
            with open(out, "w") as f:
                json.dump(lags, f)
        return records

    proc_fetch_request = afetch.Fetcher._proc_fetch_request

    async def _proc_fetch_request(self: Any, assignment: Any, *args: Any) -> Any:
        started = time.monotonic()
        try:
            return await proc_fetch_request(self, assignment, *args)
        finally:
            requests = any(tp.topic.startswith("claude.requests") for tp in assignment.tps)
            name = "requests" if requests else f"other-{id(self)}"
            lags["cycles"].setdefault(name, []).append((started, time.monotonic()))

    driver.AIOKafkaConsumerThread._fetch_records = _fetch_records  # type: ignore[method-assign]
    driver.AIOKafkaConsumerThread.getmany = _getmany  # type: ignore[method-assign]
    afetch.Fetcher._proc_fetch_request = _proc_fetch_request  # type: ignore[method-assign]
