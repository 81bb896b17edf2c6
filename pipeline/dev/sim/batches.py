"""The Message Batches API: create, retrieve, list, cancel, delete, results.

A batch is evaluated lazily: whenever it is looked at after its end time, its
requests are validated and answered in one go. No background task, nothing to
leak, and a fake clock drives it in tests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pipeline.dev.sim.config import SimConfig
from pipeline.dev.sim.errors import ApiError, invalid

_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MAX_BATCH_REQUESTS = 100_000
EXPIRY_S = 24 * 3600


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Batch:
    id: str
    key: str
    requests: list[tuple[str, object]]
    created_wall: float
    ends_at: float  # monotonic
    cancel_initiated_wall: float | None = None
    ended_wall: float | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


class Simulator(Protocol):
    """What batches need of the simulator (engine.py's Simulator): its clocks, its
    ids, its config and one request's result."""

    config: SimConfig

    def now(self) -> float: ...
    def wall(self) -> float: ...
    def new_id(self, prefix: str) -> str: ...
    def batch_result(self, key: str, params: object) -> dict[str, Any]: ...
    def batch_created(self, key: str, custom_ids: Sequence[str]) -> None: ...


class BatchStore:
    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self._batches: dict[str, Batch] = {}

    def clear(self) -> None:
        self._batches.clear()

    def create(self, key: str, body: object) -> Batch:
        if not isinstance(body, Mapping):
            raise invalid("Request body must be a JSON object")
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise invalid("requests: at least one request is required")
        if len(requests) > MAX_BATCH_REQUESTS:
            raise invalid(f"requests: at most {MAX_BATCH_REQUESTS} requests per batch")
        seen: set[str] = set()
        parsed: list[tuple[str, object]] = []
        for i, item in enumerate(requests):
            if not isinstance(item, Mapping):
                raise invalid(f"requests.{i}: Input should be a valid dictionary")
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str) or not _CUSTOM_ID.fullmatch(custom_id):
                raise invalid(f"requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$")
            if custom_id in seen:
                raise invalid(f"requests.{i}.custom_id: duplicate custom_id {custom_id!r}")
            seen.add(custom_id)
            params = item.get("params")
            if not isinstance(params, Mapping):
                raise invalid(f"requests.{i}.params: Field required")
            parsed.append((custom_id, params))
        sim = self._sim
        batch = Batch(
            id=sim.new_id("msgbatch"),
            key=key,
            requests=parsed,
            created_wall=sim.wall(),
            ends_at=sim.now() + sim.config.batch_delay_s,
        )
        self._batches[batch.id] = batch
        sim.batch_created(key, [custom_id for custom_id, _ in parsed])
        return batch

    def get(self, key: str, batch_id: str) -> Batch:
        batch = self._batches.get(batch_id)
        if batch is None or batch.key != key:
            raise ApiError(404, "not_found_error", f"No batch found with id {batch_id!r}")
        self._maybe_end(batch)
        return batch

    def list(
        self, key: str, limit: int, after_id: str | None, before_id: str | None
    ) -> dict[str, Any]:
        mine = [b for b in self._batches.values() if b.key == key]
        mine.reverse()  # newest first, like the real API
        if after_id is not None:
            ids = [b.id for b in mine]
            mine = mine[ids.index(after_id) + 1 :] if after_id in ids else []
        if before_id is not None:
            ids = [b.id for b in mine]
            mine = mine[: ids.index(before_id)] if before_id in ids else []
        page = mine[:limit]
        for b in page:
            self._maybe_end(b)
        return {
            "data": [self.to_object(b, None) for b in page],
            "has_more": len(mine) > limit,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }

    def cancel(self, key: str, batch_id: str) -> Batch:
        batch = self.get(key, batch_id)
        if batch.ended_wall is None and batch.cancel_initiated_wall is None:
            batch.cancel_initiated_wall = self._sim.wall()
            self._end(batch, canceled=True)
        return batch

    def delete(self, key: str, batch_id: str) -> dict[str, str]:
        batch = self.get(key, batch_id)
        if batch.ended_wall is None:
            raise invalid(f"Batch {batch_id} cannot be deleted while it is still processing")
        del self._batches[batch_id]
        return {"id": batch_id, "type": "message_batch_deleted"}

    def results_jsonl(self, key: str, batch_id: str) -> bytes:
        batch = self.get(key, batch_id)
        if batch.ended_wall is None:
            raise invalid(f"Batch {batch_id} has not ended yet: results are not available")
        return "".join(json.dumps(r) + "\n" for r in batch.results).encode()

    def to_object(self, batch: Batch, base_url: str | None) -> dict[str, Any]:
        ended = batch.ended_wall is not None
        if ended:
            counts = dict(batch.counts)
            status = "ended"
        else:
            counts = {
                "processing": len(batch.requests),
                "succeeded": 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            }
            status = "canceling" if batch.cancel_initiated_wall is not None else "in_progress"
        results_url = None
        if ended and base_url is not None:
            results_url = f"{base_url}/v1/messages/batches/{batch.id}/results"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": _iso(batch.ended_wall) if batch.ended_wall is not None else None,
            "created_at": _iso(batch.created_wall),
            "expires_at": _iso(batch.created_wall + EXPIRY_S),
            "archived_at": None,
            "cancel_initiated_at": (
                _iso(batch.cancel_initiated_wall)
                if batch.cancel_initiated_wall is not None
                else None
            ),
            "results_url": results_url,
        }

    def _maybe_end(self, batch: Batch) -> None:
        if batch.ended_wall is None and self._sim.now() >= batch.ends_at:
            self._end(batch, canceled=False)

    def _end(self, batch: Batch, *, canceled: bool) -> None:
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        results: list[dict[str, Any]] = []
        for custom_id, params in batch.requests:
            if canceled:
                result: dict[str, Any] = {"type": "canceled"}
            else:
                result = self._sim.batch_result(batch.key, params)
            counts[result["type"]] += 1
            results.append({"custom_id": custom_id, "result": result})
        batch.results = results
        batch.counts = counts
        batch.ended_wall = self._sim.wall()
