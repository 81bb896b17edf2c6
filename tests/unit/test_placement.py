"""Kafka's default partitioner, against the Java client's own test vectors and aiokafka."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from pipeline.placement import murmur2, partition_for


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
