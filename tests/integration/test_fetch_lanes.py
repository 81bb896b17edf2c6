"""Fetching a heavy partner apart, against the real embedded broker with the client
Faust runs (aiokafka): nothing lost or reordered, and the heavy topic on a
connection of its own once a batch over the limit has come."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from pipeline.config import Settings
from pipeline.dev.devbroker import DevBroker
from pipeline.kafka.clients import SyncProducer, TopicSpec, ensure_topics
from pipeline.kafka.faustadapter import LANE_GROUP, fetch_heavy_apart
from pipeline.kafka.fetchlanes import HEAVY, SHARED, HeavyTopics

pytestmark = pytest.mark.integration

MB = 1024 * 1024
LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    broker = DevBroker(log_file=Path(tmp_path_factory.mktemp("lanes")) / "broker.log")
    broker.start()
    try:
        yield Settings(bootstrap_servers=broker.bootstrap, profile="dev")
    finally:
        broker.stop()


def test_a_heavy_partner_is_fetched_apart_and_nothing_is_lost_or_reordered(
    settings: Settings,
) -> None:
    big = {"max.message.bytes": str(4 * MB)}
    ensure_topics(settings, [TopicSpec("lanes.heavy", 1, big), TopicSpec("lanes.light", 2, {})])
    producer = SyncProducer(settings, **{"message.max.bytes": 4 * MB, "linger.ms": 0})

    def light(start: int, stop: int) -> None:
        for i in range(start, stop):
            producer.produce("lanes.light", f"{i}".encode(), b"k", partition=i % 2)
        producer.flush()

    def heavy(n: int) -> None:
        producer.produce("lanes.heavy", bytes([n]) * (2 * MB), b"h", partition=0)
        producer.flush()

    heavy_topics = HeavyTopics(LIMIT)

    async def consume() -> tuple[list[int], list[int], set[tuple[object, int]]]:
        consumer = AIOKafkaConsumer(
            "lanes.heavy",
            "lanes.light",
            bootstrap_servers=settings.bootstrap_servers,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=10,
            max_partition_fetch_bytes=LIMIT,
        )
        await consumer.start()
        lights: list[int] = []
        heavies: list[int] = []

        async def until(n_light: int, n_heavy: int) -> None:
            while len(lights) < n_light or len(heavies) < n_heavy:
                batch = await consumer.getmany(timeout_ms=200)
                for tp, records in sorted(batch.items()):
                    for r in records:
                        assert r.value is not None
                        if tp.topic == "lanes.light":
                            lights.append(int(r.value))
                        else:
                            assert len(r.value) == 2 * MB
                            heavies.append(r.value[0])

        try:
            fetch_heavy_apart(consumer, heavy_topics)
            fetch_heavy_apart(consumer, heavy_topics)  # at every assignment: once is kept
            async with asyncio.timeout(30):
                light(0, 20)
                heavy(1)
                await until(20, 1)  # fetched with the others: nothing said it was coming
                light(20, 40)
                heavy(2)
                heavy(3)
                light(40, 60)
                await until(60, 3)
            return lights, heavies, set(consumer._client._conns)
        finally:
            await consumer.stop()

    lights, heavies, connections = asyncio.run(consume())

    assert heavies == [1, 2, 3]
    assert sorted(lights) == list(range(60))  # every record, once
    for partition in (0, 1):  # in order within each partition
        mine = [i for i in lights if i % 2 == partition]
        assert mine == sorted(mine)
    assert heavy_topics.lane("lanes.heavy") == HEAVY
    assert heavy_topics.lane("lanes.light") == SHARED
    # the heavy topic's fetches went on a connection of their own
    assert any(group == LANE_GROUP + HEAVY for _node, group in connections)
