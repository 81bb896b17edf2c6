"""The response cache: exact repeats of temperature-0 requests, per partner, within
a TTL (an injected clock), bounded, answered with zero usage and marked cached."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pipeline.client import build_request
from pipeline.lifecycle.responsecache import ResponseCache, cache_key
from pipeline.messages import fields_to_params
from pipeline.ops.metrics import Metrics
from pipeline.partners import Partner
from pipeline.records import Admitted, Job, SourceRecord
from pipeline.state import MemoryStore
from pipeline.upstream.claude import to_result

MESSAGE = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
    "content": [{"type": "text", "text": "42"}], "stop_reason": "end_turn",
    "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 3},
}  # fmt: skip


class Clock:
    now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _job(
    rid: str, *, temperature: float | None = 0.0, ttl: int | None = 600, pid: str = "acme"
) -> Job:
    request: Any = build_request(
        pid, "what is six times seven", request_id=rid, temperature=temperature
    )
    record = SourceRecord(f"claude.requests.{pid}", 0, 1, rid.encode(), b"v", [])
    partner = Partner(pid, "env:S", response_cache_ttl_s=ttl)
    return Job(Admitted(record, partner, request, fields_to_params(request), 0, 0.0, 5))


def _answered(cache: ResponseCache, job: Job) -> None:
    """What the dispatcher does with a fresh answer: remember it, written with the outcome."""
    assert cache.lookup(job) is None
    cache.remember(job, to_result(MESSAGE, {}))
    for write in job.progress.with_outcome:
        result = write()
        if asyncio.iscoroutine(result):
            result.close()


def test_only_temperature_zero_requests_have_a_key_and_it_is_per_partner_and_exact() -> None:
    params = fields_to_params(build_request("acme", "hi", request_id="a", temperature=0.0))
    assert cache_key("acme", params) is not None
    assert cache_key("acme", params) != cache_key("globex", params)
    assert cache_key("acme", {**params, "max_tokens": 17}) != cache_key("acme", params)
    assert cache_key("acme", {**params, "temperature": 0.5}) is None
    assert cache_key("acme", {k: v for k, v in params.items() if k != "temperature"}) is None
    assert cache_key("acme", {**params, "stream": True}) is None


def test_a_repeat_within_the_ttl_is_answered_with_zero_usage_and_marked_cached() -> None:
    clock, metrics = Clock(), Metrics()
    cache = ResponseCache(MemoryStore(), metrics, "w1", clock)
    _answered(cache, _job("first"))
    hit = cache.lookup(_job("second"))  # another request_id, the same request
    assert hit is not None
    assert hit.cached
    assert hit.message["content"] == MESSAGE["content"]
    assert (hit.input_tokens, hit.output_tokens) == (0, 0)
    assert cache.lookup(_job("other partner", pid="globex")) is None
    assert cache.lookup(_job("warm", temperature=1.0)) is None
    clock.now += 601  # past the TTL
    assert cache.lookup(_job("late")) is None
    assert cache.sweep() == 1
    hits = metrics.response_cache.labels("acme", "hit")._value.get()
    misses = metrics.response_cache.labels("acme", "miss")._value.get()
    assert (hits, misses) == (1, 2)


def test_a_partner_without_a_ttl_is_never_cached_and_the_cache_is_bounded() -> None:
    cache = ResponseCache(MemoryStore(), Metrics(), "w1", Clock(), max_entries=2)
    off = _job("off", ttl=None)
    assert cache.lookup(off) is None
    assert off.progress.cache_key is None
    for i in range(3):
        job = _job(f"r{i}")
        job.admitted.params["max_tokens"] = 10 + i  # three different requests
        _answered(cache, job)
    first = _job("again")
    first.admitted.params["max_tokens"] = 10
    assert cache.lookup(first) is None  # the oldest was dropped
    newest = _job("again2")
    newest.admitted.params["max_tokens"] = 12
    assert cache.lookup(newest) is not None


def test_a_cut_answer_is_not_kept() -> None:
    cache = ResponseCache(MemoryStore(), Metrics(), "w1", Clock())
    job = _job("cut")
    assert cache.lookup(job) is None
    cache.remember(job, to_result({**MESSAGE, "stop_reason": "max_tokens"}, {}))
    assert job.progress.with_outcome == []


def test_the_cache_is_bounded_in_bytes_too() -> None:
    size = len(json.dumps(MESSAGE).encode())
    cache = ResponseCache(MemoryStore(), Metrics(), "w1", Clock(), max_bytes=2 * size)
    for i in range(3):
        job = _job(f"r{i}")
        job.admitted.params["max_tokens"] = 10 + i
        _answered(cache, job)
    kept = []
    for i in range(3):
        probe = _job(f"p{i}")
        probe.admitted.params["max_tokens"] = 10 + i
        kept.append(cache.lookup(probe) is not None)
    assert kept == [False, True, True]
