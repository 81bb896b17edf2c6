"""Against a real Tansu: the end offset it lists after a batch, and the one we verify."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.config import Settings
from pipeline.devbroker import DevBroker
from pipeline.faustadapter import verified_end_offsets
from pipeline.kafka import TopicSpec, ensure_topics

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    broker = DevBroker(log_file=tmp_path / "broker.log")
    broker.start()
    try:
        yield Settings(bootstrap_servers=broker.bootstrap)
    finally:
        broker.stop()


async def _produce_batches(settings: Settings, topic: str, sizes: list[int]) -> list[int]:
    producer = AIOKafkaProducer(linger_ms=200, acks=-1, **settings.aiokafka_config())
    await producer.start()
    offsets = []
    try:
        for size in sizes:  # each round goes out as one batch of `size` records
            futures = [await producer.send(topic, b"x", partition=0) for _ in range(size)]
            offsets += [(await f).offset for f in futures]
    finally:
        await producer.stop()
    return offsets


def test_recovery_reads_to_the_last_record_of_the_last_batch(settings: Settings) -> None:
    ensure_topics(settings, [TopicSpec("ends", 1)])
    tp = TopicPartition("ends", 0)

    async def scenario() -> tuple[int, int, dict[tuple[str, int], int | None]]:
        offsets = await _produce_batches(settings, "ends", [3, 5])
        consumer = AIOKafkaConsumer(**settings.aiokafka_config())
        await consumer.start()
        try:
            listed = (await consumer.end_offsets([tp]))[tp]
        finally:
            await consumer.stop()

        def new_consumer() -> AIOKafkaConsumer:
            return AIOKafkaConsumer(enable_auto_commit=False, **settings.aiokafka_config())

        verified = await verified_end_offsets({("ends", 0): listed}, new_consumer)
        return offsets[-1] + 1, listed, verified

    true_end, listed, verified = asyncio.run(scenario())
    assert true_end == 8
    # Tansu 0.6 lists the base of the last batch plus one (4); real Kafka lists 8
    assert listed <= true_end
    assert verified == {("ends", 0): true_end}
