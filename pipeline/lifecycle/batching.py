"""The batch lane's rules, as plain values: which requests may wait for a Message
Batch, how they are packed, what the state log keeps of them, and what each
kind of batch result leads to. No I/O: `batchlane.py` does that.

A batch never mixes request partitions: the worker that owns a partition owns
every batch of its requests, whatever the rebalances, so exactly one worker
submits, polls and answers each one.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from pipeline.records import Job, SourceRecord

#: The API's own limit is 256 MB a batch; a batch closes before it.
MAX_BATCH_BYTES = 256 * 1024 * 1024
#: A request whose record is larger is served interactively: its record is kept
#: in the state log while it waits, and a state log record must stay well under
#: the broker's default 1 MB message limit.
MAX_VALUE_BYTES = 512 * 1024
#: How long a batch may take, by the API's promise (after it, its requests expire).
BATCH_LIFETIME_S = 24 * 3600
#: Error types of an `errored` batch result that an interactive call may not hit:
#: the request is sound, the batch's run of it failed. Any other type (an
#: invalid_request_error above all) would fail interactively too: dead-lettered.
RETRIED_ERRORS = frozenset({"api_error", "overloaded_error", "rate_limit_error", "timeout_error"})

Tp = tuple[str, int]


def custom_id(partner_id: str, request_id: str) -> str:
    """A request's id in a batch (the API allows 64 of [a-zA-Z0-9_-]): the same
    for every copy of the request, so a redelivery finds it already handed over."""
    digest = hashlib.sha256(f"{partner_id}|{request_id}".encode("utf-8", "surrogatepass"))
    return "r" + digest.hexdigest()[:40]


def eligible(job: Job, *, now_ms: int, max_wait_s: float) -> str | None:
    """Why the request is served interactively, or None when it may wait for a batch.
    A deadline earlier than the latest a batch could end (the longest wait to
    close it plus the API's 24 hours) is served interactively."""
    admitted = job.admitted
    if admitted.request.get("priority") != "batch" or job.progress.interactive:
        return "interactive"
    if len(admitted.record.value or b"") > MAX_VALUE_BYTES:
        return "too large to wait in the state log"
    if admitted.params.get("stream"):
        return "streaming"  # the Batches API refuses stream
    deadline = admitted.deadline_ms
    if deadline is not None and deadline < now_ms + (max_wait_s + BATCH_LIFETIME_S) * 1000:
        return "deadline before a batch could end"
    return None


# -- what the state log keeps ------------------------------------------------------------


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode()


def _raw(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def request_entry(job: Job, key_ref: str, writer: str, now_ms: int) -> dict[str, Any]:
    """A request handed over to the lane: its record as it arrived (so its outcome,
    a dead letter's sealed payload included, is what it would have been)."""
    r = job.record
    return {
        "t": r.topic,
        "p": r.partition,
        "o": r.offset,
        "k": _b64(r.key),
        "v": _b64(r.value),
        "h": [[name, _b64(value)] for name, value in r.headers],
        "ts": r.timestamp_ms,
        "rc": job.replay_count,
        "pid": job.partner_id,
        "rid": job.request_id,
        "kr": key_ref,
        "at": now_ms,
        "w": writer,
    }


def entry_record(entry: Mapping[str, Any]) -> SourceRecord:
    return SourceRecord(
        topic=str(entry["t"]),
        partition=int(entry["p"]),
        offset=int(entry["o"]),
        key=_raw(entry.get("k")),
        value=_raw(entry.get("v")),
        headers=[(str(n), _raw(v) or b"") for n, v in entry.get("h") or ()],
        timestamp_ms=entry.get("ts"),
    )


def entry_tp(entry: Mapping[str, Any]) -> Tp:
    return (str(entry["t"]), int(entry["p"]))


class BatchState(StrEnum):
    SUBMITTING = "submitting"  # written before the create call: it may or may not exist
    SUBMITTED = "submitted"  # the create call answered: `upstream` is its id


@dataclass
class BatchEntry:
    """One batch of one partition's requests, as the state log keeps it."""

    id: str
    tp: Tp
    key_ref: str
    cids: list[str]
    state: BatchState
    started_ms: int
    upstream: str | None = None
    writer: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "t": self.tp[0],
            "p": self.tp[1],
            "kr": self.key_ref,
            "cids": self.cids,
            "s": self.state.value,
            "at": self.started_ms,
            "up": self.upstream,
            "w": self.writer,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> BatchEntry:
        return cls(
            id=str(value["id"]),
            tp=(str(value["t"]), int(value["p"])),
            key_ref=str(value.get("kr") or ""),
            cids=[str(c) for c in value["cids"]],
            state=BatchState(value["s"]),
            started_ms=int(value["at"]),
            upstream=value.get("up"),
            writer=str(value.get("w") or ""),
        )


#: The state table's keys: a handed-over request's by its custom_id, a batch's by its id.
REQUEST = "r|"
BATCH = "b|"


def left_over(
    items: Iterable[tuple[str, Any]], tps: set[Tp]
) -> tuple[list[BatchEntry], list[tuple[str, dict[str, Any]]]]:
    """The batches and the handed-over requests (custom_id, entry) of partitions `tps`."""
    batches, requests = [], []
    for key, value in items:
        if not isinstance(value, dict):
            continue
        if key.startswith(BATCH):
            entry = BatchEntry.from_json(value)
            if entry.tp in tps:
                batches.append(entry)
        elif key.startswith(REQUEST) and entry_tp(value) in tps:
            requests.append((key[len(REQUEST) :], value))
    return batches, requests


# -- packing ---------------------------------------------------------------------------


@dataclass
class Group:
    """Requests of one partition waiting for a batch on one key."""

    jobs: dict[str, Job] = field(default_factory=dict)  # custom_id -> job
    bytes: int = 0
    first_mono: float = 0.0


class Packer:
    """Open batches being filled, one per (upstream key, partition): a batch closes at
    `max_requests`, at `MAX_BATCH_BYTES`, or `max_wait_s` after its first request."""

    def __init__(self, max_requests: int, max_wait_s: float, mono: Callable[[], float]) -> None:
        self.max_requests = max_requests
        self.max_wait_s = max_wait_s
        self._mono = mono
        self.groups: dict[tuple[str, Tp], Group] = {}

    def __len__(self) -> int:
        return sum(len(g.jobs) for g in self.groups.values())

    def add(self, key_ref: str, tp: Tp, cid: str, job: Job, size: int) -> Group | None:
        """Add a request; the group it closed, if it did (full)."""
        group = self.groups.get((key_ref, tp))
        if group is None:
            group = self.groups[key_ref, tp] = Group(first_mono=self._mono())
        if cid in group.jobs:
            return None
        if group.jobs and group.bytes + size > MAX_BATCH_BYTES:
            closed = self.groups.pop((key_ref, tp))
            self.add(key_ref, tp, cid, job, size)
            return closed
        group.jobs[cid] = job
        group.bytes += size
        if len(group.jobs) >= self.max_requests:
            return self.groups.pop((key_ref, tp))
        return None

    def due(self) -> tuple[list[tuple[str, Tp, Group]], float | None]:
        """Groups whose wait is over (taken out), and seconds until the next is due."""
        now = self._mono()
        closed, next_s = [], None
        for (key_ref, tp), group in list(self.groups.items()):
            left = group.first_mono + self.max_wait_s - now
            if left <= 0:
                closed.append((key_ref, tp, self.groups.pop((key_ref, tp))))
            else:
                next_s = left if next_s is None else min(next_s, left)
        return closed, next_s

    def drop(self, tps: set[Tp]) -> list[Job]:
        """Forget the groups of partitions this worker no longer owns."""
        dropped: list[Job] = []
        for key_ref, tp in list(self.groups):
            if tp in tps:
                dropped.extend(self.groups.pop((key_ref, tp)).jobs.values())
        return dropped


# -- results ---------------------------------------------------------------------------


class Action(Enum):
    PUBLISH = "publish"  # succeeded: the answer, at the batch price
    INTERACTIVE = "interactive"  # served again as one interactive request
    REJECT = "reject"  # dead-lettered as upstream_rejected, with Claude's error type
    EXPIRE = "expire"  # dead-lettered as deadline_expired


@dataclass(frozen=True)
class Decision:
    action: Action
    detail: str = ""
    error_type: str | None = None


def decide(result: Mapping[str, Any], deadline_ms: int | None, now_ms: int) -> Decision:
    """What one request's batch result leads to."""
    kind = result.get("type")
    if kind == "succeeded" and isinstance(result.get("message"), Mapping):
        return Decision(Action.PUBLISH)
    if kind == "errored":
        outer = result.get("error")
        inner = outer.get("error") if isinstance(outer, Mapping) else None
        error = inner if isinstance(inner, Mapping) else outer if isinstance(outer, Mapping) else {}
        error_type = str(error.get("type") or "api_error")
        message = str(error.get("message") or "the batch reported an error")
        if error_type in RETRIED_ERRORS:
            return Decision(Action.INTERACTIVE, message, error_type)
        return Decision(Action.REJECT, f"Claude refused it in a batch: {message}", error_type)
    # expired, canceled, or a result this version does not know
    if deadline_ms is not None and now_ms >= deadline_ms:
        return Decision(Action.EXPIRE, f"its batch ended {kind} after the request's deadline")
    return Decision(Action.INTERACTIVE, f"its batch ended {kind}")


# -- what `claude-pipeline batches list` shows ----------------------------------------------


def open_rows(table: Mapping[str, Any], now_ms: int) -> list[dict[str, Any]]:
    """The lane's state as rows: each batch (submitting or submitted), then the
    requests still waiting for one, per key and partition."""
    rows: list[dict[str, Any]] = []
    batched: set[str] = set()
    for key, value in sorted(table.items()):
        if key.startswith(BATCH) and isinstance(value, dict):
            entry = BatchEntry.from_json(value)
            batched.update(entry.cids)
            rows.append(
                {
                    "batch": entry.id,
                    "key": entry.key_ref or "default",
                    "topic": entry.tp[0],
                    "partition": entry.tp[1],
                    "requests": len(entry.cids),
                    "age_s": max(0, now_ms - entry.started_ms) // 1000,
                    "status": entry.state.value,
                    "upstream_batch": entry.upstream,
                }
            )
    waiting: dict[tuple[str, str, int], list[int]] = {}
    for key, value in table.items():
        if key.startswith(REQUEST) and isinstance(value, dict) and key[2:] not in batched:
            group = (str(value.get("kr") or "default"), *entry_tp(value))
            waiting.setdefault(group, []).append(int(value.get("at") or now_ms))
    for (key_ref, topic, partition), handed in sorted(waiting.items()):
        rows.append(
            {
                "batch": None,
                "key": key_ref,
                "topic": topic,
                "partition": partition,
                "requests": len(handed),
                "age_s": max(0, now_ms - min(handed)) // 1000,
                "status": "waiting",
                "upstream_batch": None,
            }
        )
    return rows
