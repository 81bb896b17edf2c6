"""The batch lane's calls to the Message Batches API: submit, find a batch a
crashed worker may have submitted, poll until it ended and read its results.

Failures the API may recover from are retried with backoff (honouring
retry-after); a batch the API will never take or has forgotten raises
`Unusable`, and the lane serves its requests interactively instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from pipeline.errors import UpstreamError
from pipeline.failpoints import Failpoints
from pipeline.lifecycle.batching import BatchEntry
from pipeline.ops.metrics import Metrics
from pipeline.upstream.batches import BatchApi, created_ms

log = logging.getLogger("pipeline.lifecycle.batchcalls")

#: The longest wait between two polls of a batch, or two tries of a failed call.
POLL_MAX_S = 60.0
#: Slack for the clocks of the API and of the worker that wrote a `submitting` entry.
CLOCK_SLACK_MS = 60_000


class Unusable(Exception):
    """The batch cannot be used: the API refused it for good, or forgot it."""


def fields(entry: BatchEntry) -> dict[str, object]:
    return {
        "batch": entry.id,
        "upstream_batch": entry.upstream,
        "topic": entry.tp[0],
        "partition": entry.tp[1],
        "requests": len(entry.cids),
    }


class BatchCalls:
    def __init__(
        self,
        api: BatchApi,
        poll_s: float,
        metrics: Metrics,
        failpoints: Failpoints,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._poll_s = poll_s
        self._metrics = metrics
        self._failpoints = failpoints
        self._mono = mono

    async def _retrying(self, call: Callable[[], Awaitable[Any]], entry: BatchEntry) -> Any:
        delay = self._poll_s
        while True:
            try:
                return await call()
            except UpstreamError as err:
                if not err.retriable or err.status == 404:
                    raise Unusable(err.message) from err
                log.warning(
                    "Batches API call failed, retrying",
                    extra={**fields(entry), "error": err.message},
                )
                await asyncio.sleep(err.retry_after or delay)
                delay = min(delay * 1.5, POLL_MAX_S)

    async def submit(
        self, entry: BatchEntry, api_key: str, requests: Sequence[Mapping[str, Any]]
    ) -> tuple[str, list[dict[str, Any]] | None]:
        """Create the batch, never twice: after a failure that may have created it
        anyway (a timeout, a lost connection, a 5xx: anything but a 429, which
        refuses before doing anything), the batch is looked for before the create
        call is made again. Its id, and its results when it was found ended."""
        delay = self._poll_s
        while True:
            try:
                created = await self._api.create(api_key, requests)
            except UpstreamError as err:
                if not err.retriable:
                    raise Unusable(err.message) from err
                log.warning("batch create failed", extra={**fields(entry), "error": err.message})
                await asyncio.sleep(err.retry_after or delay)
                delay = min(delay * 1.5, POLL_MAX_S)
                if err.status != 429:
                    found = await self.find(entry, api_key)
                    if found is not None:
                        return found
                continue
            return str(created["id"]), None

    async def find(
        self, entry: BatchEntry, api_key: str
    ) -> tuple[str, list[dict[str, Any]]] | None:
        """After a crash between `submitting` and `submitted`: the batch the create
        call made, if it made one (its id and results), found by its custom_ids
        among the key's batches created since."""
        wanted = set(entry.cids)
        since = entry.started_ms - CLOCK_SLACK_MS
        candidates = await self._retrying(lambda: self._api.created_since(api_key, since), entry)
        for batch in sorted(candidates, key=created_ms):
            probe = replace(entry, upstream=str(batch["id"]))
            try:
                results = await self.results(probe, api_key)
            except Unusable:
                continue
            if any(r.get("custom_id") in wanted for r in results):
                log.info("found the batch a crashed worker submitted", extra=fields(probe))
                return str(probe.upstream), results
        log.info(
            "the batch a crashed worker was submitting never reached the API: submitting it",
            extra=fields(entry),
        )
        return None

    async def results(self, entry: BatchEntry, api_key: str) -> list[dict[str, Any]]:
        """Poll with backoff until the batch ended, then its results."""
        upstream = str(entry.upstream)
        delay = self._poll_s
        started = self._mono()
        while True:
            self._failpoints.hit("batch_polling")
            batch = await self._retrying(lambda: self._api.retrieve(api_key, upstream), entry)
            if batch.get("processing_status") == "ended":
                break
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX_S)
        self._metrics.batch_turnaround.observe(self._mono() - started)
        results: list[dict[str, Any]] = await self._retrying(
            lambda: self._api.results(api_key, upstream), entry
        )
        return results
