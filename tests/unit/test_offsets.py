"""What the request consumer commits (pipeline/kafka/offsets.py): never past a
record whose work is not done."""

from __future__ import annotations

from pipeline.kafka.offsets import Offsets

A = ("claude.requests.a", 0)
B = ("claude.requests.a", 1)


def test_the_commit_stops_at_the_oldest_record_not_done() -> None:
    offsets = Offsets()
    offsets.assigned([A])
    for offset in (5, 6, 7, 8):
        offsets.delivered(A, offset)
    offsets.acked(A, 6)
    offsets.acked(A, 8)
    # 5 is still being served: committing 9 (or 7) would lose it in a crash
    assert offsets.commits() == {A: 5}
    offsets.acked(A, 5)
    assert offsets.commits() == {A: 7}
    offsets.acked(A, 7)
    assert offsets.commits() == {A: 9}  # all done: one past the newest
    assert offsets.commits() == {}  # nothing moved since


def test_partitions_are_independent_and_a_revoked_one_is_forgotten() -> None:
    offsets = Offsets()
    offsets.assigned([A, B])
    offsets.delivered(A, 0)
    offsets.delivered(B, 10)
    offsets.acked(B, 10)
    assert offsets.commits() == {A: 0, B: 11}
    offsets.revoked([A])
    assert not offsets.owns(A)
    offsets.acked(A, 0)  # an ack that comes after the revoke changes nothing
    assert not offsets.delivered(A, 1)  # a record of a partition no longer owned
    assert offsets.commits() == {}


def test_a_record_delivered_twice_is_done_when_acked_once() -> None:
    # A rebalance hands the partition back: librdkafka fetches from the commit again.
    offsets = Offsets()
    offsets.assigned([A])
    offsets.delivered(A, 3)
    offsets.delivered(A, 4)
    offsets.delivered(A, 3)
    assert offsets.in_flight(A) == 2
    offsets.acked(A, 3)
    offsets.acked(A, 4)
    assert offsets.commits() == {A: 5}


def test_a_failed_commit_is_handed_out_again() -> None:
    offsets = Offsets()
    offsets.assigned([A])
    offsets.delivered(A, 0)
    offsets.acked(A, 0)
    positions = offsets.commits()
    assert positions == {A: 1}
    offsets.uncommit(positions)
    assert offsets.commits() == {A: 1}


def test_a_partition_that_leaves_commits_its_position_even_if_handed_out_before() -> None:
    # The periodic commit is asynchronous and may be lost with the consumer; the
    # revoke commits synchronously, so it asks for every position again.
    offsets = Offsets()
    offsets.assigned([A, B])
    offsets.delivered(A, 0)
    offsets.acked(A, 0)
    assert offsets.commits() == {A: 1}
    assert offsets.positions([A, B]) == {A: 1}  # B: nothing delivered, nothing to say


def test_nothing_delivered_commits_nothing() -> None:
    offsets = Offsets()
    offsets.assigned([A])
    assert offsets.position(A) is None
    assert offsets.commits() == {}


def test_acked_offsets_behind_a_stuck_record_do_not_pile_up() -> None:
    # r0 waits out a long back-off while thousands after it are done
    offsets, tp = Offsets(), ("claude.requests.acme", 0)
    offsets.assigned([tp])
    for offset in range(10_000):
        offsets.delivered(tp, offset)
        if offset:
            offsets.acked(tp, offset)
    part = offsets._parts[tp]
    assert len(part.heap) <= 2 * len(part.pending) + 64
    assert offsets.position(tp) == 0  # still held at the stuck record
    offsets.acked(tp, 0)
    assert offsets.position(tp) == 10_000
