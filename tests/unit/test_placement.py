"""Kafka's default partitioner, against the Java client's own test vectors and aiokafka;
and what a record outside its key's partition gets."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from pipeline.kafka.homes import Homes
from pipeline.lifecycle.placement import murmur2, partition_for
from pipeline.state import MemoryStore, ReplayGuard


@pytest.mark.parametrize(
    ("text", "expected"),
    [  # org.apache.kafka.common.utils.UtilsTest
        ("21", -973932308),
        ("foobar", -790332482),
        ("a-little-bit-long-string", -985981536),
        ("a-little-bit-longer-string", -1486304829),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        ("abc", 479470107),
    ],
)
def test_murmur2_matches_the_java_client(text: str, expected: int) -> None:
    assert murmur2(text.encode()) == expected


def test_partitions_match_aiokafkas_default_partitioner() -> None:
    rng = random.Random(7)
    for _ in range(500):
        key = rng.randbytes(rng.randrange(0, 64))
        for count in (1, 3, 4, 5, 12):
            assert partition_for(key, count) == (aiokafka_murmur2(key) & 0x7FFFFFFF) % count


# -- a misplaced record: its partner's mistake, or a moved replay (pipeline/kafka/homes.py) --


class _Homes:
    """Homes over an injected scan and guard, recording what ran in what order."""

    def __init__(self, held: bool | None, served: bool = False) -> None:
        self.steps: list[str] = []
        self.guard = ReplayGuard(MemoryStore(), 300.0, wall=lambda: 1_000.0)
        if served:
            self.guard.end("acme", "r1", ("claude.requests.acme", 0, 7), 0)

        def scan(topic: str, partitions: list[int], key: bytes) -> bool | None:
            self.steps.append(f"scan {topic} {partitions} {key!r}")
            return held

        async def caught_up() -> None:
            self.steps.append("state log read to now")

        async def sleep(seconds: float) -> None:
            self.steps.append(f"wait {seconds:.1f} s")

        self.homes = Homes(scan, self.guard, caught_up, wall=lambda: 1_000.25, sleep=sleep)

    def unclaimed(self, homes: list[int], written_ms: int = 990_000) -> bool:
        return asyncio.run(
            self.homes.unclaimed("acme", "r1", "claude.requests.acme", homes, written_ms)
        )


def test_a_misplaced_request_with_no_copy_anywhere_is_answered() -> None:
    h = _Homes(held=False)
    assert h.unclaimed([2, 5])
    # the committed offsets are read before the state log: what lies below them
    # has its served marker in the log by then
    assert h.steps == ["scan claude.requests.acme [2, 5] b'r1'", "state log read to now"]


def test_home_is_read_a_second_after_the_record_was_written_not_before() -> None:
    # Before: one producer writing a copy and its original at once could land
    # the copy first; home was read before the original arrived, and a replay
    # was answered with an error beside the original's response.
    h = _Homes(held=True)
    assert not h.unclaimed([2], written_ms=1_000_000)  # written 0.25 s ago
    assert h.steps == ["wait 0.8 s", "scan claude.requests.acme [2] b'r1'"]


def test_a_copy_waiting_or_in_flight_at_home_means_a_replay_gets_no_answer() -> None:
    h = _Homes(held=True)
    assert not h.unclaimed([2])
    assert h.steps == ["scan claude.requests.acme [2] b'r1'"]


def test_a_copy_served_before_the_committed_offset_means_no_answer() -> None:
    assert not _Homes(held=False, served=True).unclaimed([2])


def test_when_home_cannot_be_read_or_is_unknown_nobody_is_answered() -> None:
    assert not _Homes(held=None).unclaimed([2])  # too far to read, or no answer
    h = _Homes(held=False)
    assert not h.unclaimed([])  # the topic's partition count is not known
    assert h.steps == []
