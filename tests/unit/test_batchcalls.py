"""The batch lane's calls: a create that failed in a way that may have created the
batch anyway is never simply sent again; the batch is looked for first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from pipeline.errors import UpstreamError
from pipeline.failpoints import Failpoints
from pipeline.lifecycle.batchcalls import BatchCalls, Unusable
from pipeline.lifecycle.batching import BatchEntry, BatchState
from pipeline.ops.metrics import Metrics

CREATED_AT = "2026-12-07T10:00:00Z"
STARTED_MS = 1_796_637_600_000  # 10:00:00 that day


class FakeApi:
    """A Batches API whose create calls fail as told, after (or before) creating."""

    def __init__(self, failures: list[tuple[int, bool]]) -> None:
        self.failures = failures  # (status, created anyway) per create call, in order
        self.batches: dict[str, list[str]] = {}  # id -> its custom_ids
        self.creates = 0

    async def create(self, api_key: str, requests: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        self.creates += 1
        status, created = self.failures.pop(0) if self.failures else (0, True)
        if created:
            self.batches[f"msgbatch_{len(self.batches)}"] = [r["custom_id"] for r in requests]
        if status:
            raise UpstreamError(
                f"{status}", error_class="5xx", status=status, retriable=status >= 429
            )
        return {"id": f"msgbatch_{len(self.batches) - 1}"}

    async def created_since(self, api_key: str, since_ms: int) -> list[dict[str, Any]]:
        return [{"id": i, "created_at": CREATED_AT} for i in self.batches]

    async def retrieve(self, api_key: str, batch_id: str) -> dict[str, Any]:
        return {"id": batch_id, "processing_status": "ended"}

    async def results(self, api_key: str, batch_id: str) -> list[dict[str, Any]]:
        return [{"custom_id": c, "result": {"type": "expired"}} for c in self.batches[batch_id]]


def _calls(api: FakeApi) -> BatchCalls:
    return BatchCalls(api, 0.001, Metrics(), Failpoints())  # type: ignore[arg-type]


ENTRY = BatchEntry("b1", ("t", 0), "", ["c1", "c2"], BatchState.SUBMITTING, STARTED_MS)
REQUESTS = [{"custom_id": "c1", "params": {}}, {"custom_id": "c2", "params": {}}]


async def test_a_timeout_that_created_the_batch_is_found_not_sent_again() -> None:
    api = FakeApi([(504, True)])
    upstream, results = await _calls(api).submit(ENTRY, "k", REQUESTS)
    assert (api.creates, upstream, len(api.batches)) == (1, "msgbatch_0", 1)
    assert results is not None
    assert [r["custom_id"] for r in results] == ["c1", "c2"]


async def test_a_failure_that_created_nothing_is_sent_again_once_it_is_sure() -> None:
    api = FakeApi([(500, False), (429, False)])  # the 429 refused before doing anything
    upstream, results = await _calls(api).submit(ENTRY, "k", REQUESTS)
    assert (api.creates, upstream, results) == (3, "msgbatch_0", None)
    assert api.batches == {"msgbatch_0": ["c1", "c2"]}


async def test_a_batch_the_api_refuses_for_good_is_unusable() -> None:
    with pytest.raises(Unusable):
        await _calls(FakeApi([(400, False)])).submit(ENTRY, "k", REQUESTS)
