"""The batch lane's rules: who may wait for a batch, packing (with an injected
clock), what the state log keeps, and what each kind of batch result leads to."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.client import build_request
from pipeline.lifecycle import batching as b
from pipeline.messages import fields_to_params
from pipeline.partners import Partner
from pipeline.records import Admitted, Job, SourceRecord

NOW_MS = 1_800_000_000_000


def _job(
    rid: str = "r1",
    *,
    priority: str = "batch",
    deadline_ms: int | None = None,
    value: bytes = b"v",
    partition: int = 0,
) -> Job:
    request: Any = build_request("acme", "hello", request_id=rid)
    request["priority"] = priority
    request["deadline_ms"] = deadline_ms
    record = SourceRecord(
        "claude.requests.acme", partition, 7, rid.encode(), value, [("x-timestamp", b"1")], 5
    )
    admitted = Admitted(
        record, Partner("acme", "env:S"), request, fields_to_params(request), 2, 0.0, 5
    )
    return Job(admitted)


def test_only_batch_requests_that_can_wait_for_a_batch_take_the_lane() -> None:
    def why(job: Job) -> str | None:
        return b.eligible(job, now_ms=NOW_MS, max_wait_s=60)

    assert why(_job()) is None
    assert why(_job(priority="interactive")) == "interactive"
    demoted = _job()
    demoted.progress.interactive = True  # its batch failed it
    assert why(demoted) == "interactive"
    assert why(_job(value=b"x" * (b.MAX_VALUE_BYTES + 1))) == "too large to wait in the state log"
    # a deadline before the batch could end at the latest (60 s to close, 24 h to run)
    latest = NOW_MS + (60 + b.BATCH_LIFETIME_S) * 1000
    assert why(_job(deadline_ms=latest - 1)) == "deadline before a batch could end"
    assert why(_job(deadline_ms=latest)) is None


def test_a_custom_id_is_the_same_for_every_copy_and_fits_the_api() -> None:
    cid = b.custom_id("acme", "r1")
    assert cid == b.custom_id("acme", "r1") != b.custom_id("acme", "r2")
    assert b.custom_id("acme", "r1") != b.custom_id("acme2", "r1")
    assert len(cid) <= 64
    assert cid.replace("_", "").replace("-", "").isalnum()


def test_a_request_entry_gives_back_its_record_byte_for_byte() -> None:
    job = _job(value=b"\x00\xffavro")
    entry = b.request_entry(job, "env:KEY", "w1", NOW_MS)
    assert b.entry_record(entry) == job.record
    assert b.entry_tp(entry) == ("claude.requests.acme", 0)
    assert (entry["pid"], entry["rid"], entry["rc"], entry["kr"]) == ("acme", "r1", 2, "env:KEY")


def test_a_batch_entry_round_trips_and_left_overs_are_found_by_partition() -> None:
    entry = b.BatchEntry("id1", ("t", 1), "", ["c1", "c2"], b.BatchState.SUBMITTING, NOW_MS)
    assert b.BatchEntry.from_json(entry.to_json()) == entry
    request = b.request_entry(_job(partition=1), "", "w", NOW_MS)
    items = [
        (b.BATCH + "id1", entry.to_json()),
        (b.REQUEST + "c1", {**request, "t": "t"}),
        (b.REQUEST + "c9", {**request, "t": "t", "p": 2}),
        ("other", {"x": 1}),
    ]
    batches, requests = b.left_over(items, {("t", 1)})
    assert batches == [entry]
    assert [cid for cid, _ in requests] == ["c1"]
    assert b.left_over(items, {("t", 2)})[0] == []


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_batch_closes_when_full_or_when_its_first_request_waited_long_enough() -> None:
    clock = Clock()
    packer = b.Packer(max_requests=3, max_wait_s=60, mono=clock)
    tp = ("claude.requests.acme", 0)
    assert packer.add("", tp, "c1", _job("r1"), 10) is None
    clock.now += 30
    assert packer.add("", tp, "c2", _job("r2"), 10) is None
    assert packer.add("", tp, "c2", _job("r2"), 10) is None  # a copy: counted once
    assert packer.add("env:OTHER", tp, "c3", _job("r3"), 10) is None  # another key's batch
    assert packer.add("", ("claude.requests.acme", 1), "c4", _job("r4"), 10) is None
    assert len(packer) == 4
    closed, next_s = packer.due()
    assert closed == []
    assert next_s == pytest.approx(30.0)
    full = packer.add("", tp, "c5", _job("r5"), 10)
    assert full is not None
    assert list(full.jobs) == ["c1", "c2", "c5"]
    clock.now += 60  # the other key's and partition 1's first requests waited 60 s
    closed, next_s = packer.due()
    assert sorted((key, t[1]) for key, t, _ in closed) == [("", 1), ("env:OTHER", 0)]
    assert next_s is None
    assert len(packer) == 0


def test_a_batch_closes_before_the_apis_size_limit() -> None:
    packer = b.Packer(max_requests=10, max_wait_s=60, mono=Clock())
    tp = ("t", 0)
    assert packer.add("", tp, "c1", _job("r1"), b.MAX_BATCH_BYTES - 10) is None
    closed = packer.add("", tp, "c2", _job("r2"), 20)
    assert closed is not None
    assert list(closed.jobs) == ["c1"]
    assert len(packer) == 1  # c2 opened the next batch


def test_dropping_a_partition_forgets_its_waiting_requests_only() -> None:
    packer = b.Packer(max_requests=10, max_wait_s=60, mono=Clock())
    packer.add("", ("t", 0), "c1", _job("r1"), 1)
    packer.add("", ("t", 1), "c2", _job("r2"), 1)
    dropped = packer.drop({("t", 0)})
    assert [j.request_id for j in dropped] == ["r1"]
    assert len(packer) == 1


@pytest.mark.parametrize(
    ("result", "deadline_ms", "action", "error_type"),
    [
        ({"type": "succeeded", "message": {"id": "m"}}, None, b.Action.PUBLISH, None),
        # the request is sound, the batch's run of it failed: one interactive try
        (
            {"type": "errored", "error": {"type": "error", "error": {"type": "overloaded_error"}}},
            None,
            b.Action.INTERACTIVE,
            "overloaded_error",
        ),
        # it would fail interactively too
        (
            {
                "type": "errored",
                "error": {"type": "error", "error": {"type": "invalid_request_error"}},
            },
            None,
            b.Action.REJECT,
            "invalid_request_error",
        ),
        ({"type": "expired"}, None, b.Action.INTERACTIVE, None),
        ({"type": "canceled"}, NOW_MS + 1, b.Action.INTERACTIVE, None),
        ({"type": "expired"}, NOW_MS, b.Action.EXPIRE, None),
        ({"type": "something new"}, None, b.Action.INTERACTIVE, None),
    ],
)
def test_each_kind_of_batch_result_leads_to_its_action(
    result: dict[str, Any], deadline_ms: int | None, action: b.Action, error_type: str | None
) -> None:
    decision = b.decide(result, deadline_ms, NOW_MS)
    assert (decision.action, decision.error_type) == (action, error_type)


def test_batches_list_shows_each_batch_then_the_requests_waiting_per_key_and_partition() -> None:
    entry = b.BatchEntry(
        "id1", ("t", 1), "env:K", ["c1"], b.BatchState.SUBMITTED, NOW_MS - 90_000, "msgbatch_1"
    )
    waiting = b.request_entry(_job(partition=1), "", "w", NOW_MS - 5_000)
    table = {
        b.BATCH + "id1": entry.to_json(),
        b.REQUEST + "c1": {**waiting, "t": "t"},  # in the batch: not waiting
        b.REQUEST + "c2": {**waiting, "t": "t"},
        b.REQUEST + "c3": {**waiting, "t": "t", "at": NOW_MS - 9_000},
    }
    rows = b.open_rows(table, NOW_MS)
    assert [(r["batch"], r["key"], r["requests"], r["age_s"], r["status"]) for r in rows] == [
        ("id1", "env:K", 1, 90, "submitted"),
        (None, "default", 2, 9, "waiting"),
    ]
    assert rows[0]["upstream_batch"] == "msgbatch_1"
