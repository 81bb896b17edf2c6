"""The response cache: an exact repeat of a deterministic request, answered from
an earlier answer without calling Claude (the seed guide's "cache frequent,
identical responses").

Opt-in per partner (`partners set ID --response-cache-ttl 10m`), and only for a
request at temperature 0: anything else may rightly get a different answer. The
match is exact on the whole request as Claude would receive it (the model and
every parameter), and never across partners. Entries live in the state log's
`responses` table, so every worker answers from every other's; each worker
keeps at most `MAX_ENTRIES` of them and `MAX_BYTES` in all (the oldest are
dropped), none larger than `MAX_MESSAGE_BYTES`, and none past its TTL. A hit
is a normal response marked `cached`, with a usage record of zero tokens and
zero cost.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from pipeline.ops.metrics import Metrics
from pipeline.records import Job, Params
from pipeline.state import Store
from pipeline.upstream.claude import UpstreamResult, to_result

MAX_ENTRIES = 10_000
MAX_MESSAGE_BYTES = 64 * 1024
#: What all of a worker's entries may hold, as JSON.
MAX_BYTES = 64 * 1024 * 1024
_ZERO_USAGE = {
    "input_tokens": 0,
    "output_tokens": 0,
    "cache_read_input_tokens": 0,
    "cache_creation_input_tokens": 0,
}


def cache_key(partner_id: str, params: Params) -> str | None:
    """The request's key in the cache, or None when it may not be cached."""
    if params.get("temperature") != 0 or params.get("stream"):
        return None
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return f"{partner_id}|{hashlib.sha256(canonical.encode()).hexdigest()}"


class ResponseCache:
    def __init__(
        self,
        table: Store,
        metrics: Metrics,
        writer: str = "",
        wall: Callable[[], float] = time.time,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self._table = table
        self._metrics = metrics
        self._writer = writer
        self._wall = wall
        self._max, self._max_bytes, self._bytes = max_entries, max_bytes, 0
        #: key -> (expiry in ms, size in bytes), oldest first
        self._order: OrderedDict[str, tuple[int, int]] = OrderedDict()
        for key, value in table.items():
            self._index(key, value)
        table.watch(self._index)

    def _index(self, key: str, value: Any) -> None:
        _, size = self._order.pop(key, (0, 0))
        self._bytes -= size
        if not isinstance(value, dict):
            return
        size = len(json.dumps(value.get("msg"), default=str).encode())
        self._order[key] = (int(value.get("exp") or 0), size)
        self._bytes += size
        while len(self._order) > self._max or self._bytes > self._max_bytes:
            oldest, (_, size) = self._order.popitem(last=False)
            self._bytes -= size
            self._table.delete(oldest)

    def lookup(self, job: Job) -> UpstreamResult | None:
        """The cached answer to this request, or None (then, if it may be cached,
        its key is kept for `remember`)."""
        admitted = job.admitted
        ttl = admitted.partner.response_cache_ttl_s
        if not ttl or admitted.body is not None:  # a heavy request: not worth a key
            return None
        key = cache_key(job.partner_id, admitted.params)
        if key is None:
            return None
        entry = self._table.get(key)
        if not isinstance(entry, dict) or int(entry.get("exp") or 0) <= self._wall() * 1000:
            self._metrics.response_cache.labels(job.partner_id, "miss").inc()
            job.progress.cache_key = key
            return None
        self._metrics.response_cache.labels(job.partner_id, "hit").inc()
        message = {**entry["msg"], "usage": _ZERO_USAGE}
        return replace(to_result(message, {}), cached=True)

    def remember(self, job: Job, result: UpstreamResult) -> None:
        """Keep a fresh answer, written with the request's outcome."""
        key, ttl = job.progress.cache_key, job.admitted.partner.response_cache_ttl_s
        if key is None or not ttl or result.stop_reason not in ("end_turn", "stop_sequence"):
            return  # only whole answers: a cut one (max_tokens) is not worth repeating
        message: Mapping[str, Any] = result.message
        if len(json.dumps(message, default=str).encode()) > MAX_MESSAGE_BYTES:
            return
        entry = {"exp": int((self._wall() + ttl) * 1000), "msg": dict(message), "w": self._writer}
        job.progress.with_outcome.append(lambda: self._table.put(key, entry))

    def sweep(self) -> int:
        """Forget the entries past their TTL."""
        now = self._wall() * 1000
        expired = [k for k, (exp, _) in self._order.items() if exp <= now]
        for key in expired:
            self._table.delete(key)
        return len(expired)
