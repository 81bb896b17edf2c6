"""The group's size from a round-robin assignment (Tansu describes no members)."""

from __future__ import annotations

from pipeline.kafka.poller import roundrobin_members

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
