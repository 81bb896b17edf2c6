"""The group's size from a round-robin assignment (Tansu describes no members)."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, cast

from pipeline.config import Settings
from pipeline.kafka.poller import Poller, roundrobin_members

A, B = "claude.requests.a", "claude.requests.b"


def test_partitions_n_apart_mean_n_members() -> None:
    counts = {B: 4, A: 4}  # the assignor deals topics by name: a's four, then b's
    assert roundrobin_members(counts, {(A, 0), (A, 2), (B, 0), (B, 2)}) == 2
    assert roundrobin_members(counts, {(A, 1), (B, 0)}) == 3
    assert roundrobin_members(counts, {(A, i) for i in range(4)} | {(B, i) for i in range(4)}) == 1


def test_one_partition_bounds_the_group_from_below() -> None:
    assert roundrobin_members({A: 4}, {(A, 3)}) == 4  # the last member of four
    assert roundrobin_members({A: 4}, {(A, 1)}) == 3  # 1 + 3 is past the end


def test_no_partitions_say_nothing() -> None:
    assert roundrobin_members({A: 4}, set()) is None
    assert roundrobin_members({}, {(A, 0)}) is None


class _Part:
    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition


class _Consumer:
    """What `Poller._commit` asks of librdkafka's consumer."""

    def __init__(self, owned: list[tuple[str, int]]) -> None:
        self.owned = owned
        self.commits: list[list[tuple[str, int, int]]] = []

    def assignment(self) -> list[_Part]:
        return [_Part(t, p) for t, p in self.owned]

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        self.commits.append([(o.topic, o.partition, o.offset) for o in offsets])


def _poller() -> Poller:
    return Poller(Settings(), {}, cast(Any, None), "^claude\\.requests\\..+")


def test_a_commit_asked_for_before_a_rebalance_skips_the_partitions_it_let_go() -> None:
    # The revoke committed (A, 0) itself and let it go; an older position for it,
    # queued before, must not move its new owner's committed offset back.
    consumer = _Consumer(owned=[(A, 1)])
    _poller()._commit(cast(Any, consumer), {(A, 0): 5, (A, 1): 7})
    assert consumer.commits == [[(A, 1, 7)]]
    _poller()._commit(cast(Any, consumer), {(A, 0): 6})
    assert len(consumer.commits) == 1  # nothing of ours left: nothing sent


def test_a_coordinator_slow_to_describe_the_group_leaves_the_stride_to_count() -> None:
    class SlowAdmin:
        def describe_consumer_groups(self, groups: list[str]) -> dict[str, Any]:
            future: Future[Any] = Future()
            future.set_exception(TimeoutError())  # what .result(timeout) raises
            return {g: future for g in groups}

    poller = _poller()
    poller._admin = SlowAdmin()
    poller.counts = {A: 4}
    mine = [cast(Any, _Part(A, 0)), cast(Any, _Part(A, 2))]
    assert poller._group_size(mine) == 2  # not a crash of the rebalance callback
