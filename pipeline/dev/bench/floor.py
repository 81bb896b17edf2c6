"""The broker's share of the added latency: the same steady load produced by the
partner library's producer and read by a bare aiokafka consumer (the client Faust
runs), with no Faust, no worker and nothing else on the consumer's event loop.
What the worker's intake adds beyond this is ours and Faust's."""

from __future__ import annotations

import asyncio
import threading
import time

from aiokafka import AIOKafkaConsumer

from pipeline.config import Settings
from pipeline.dev.bench.result import pct
from pipeline.kafka.clients import SyncProducer, TopicSpec, ensure_topics

TOPIC = "bench.floor"


def kafka_floor(
    settings: Settings, rate: float, seconds: float, fetch_wait_ms: int, linger_ms: float
) -> dict[str, float]:
    """Record timestamp to a bare consumer's hands, p50 and p99 in ms."""
    topic = f"{TOPIC}.{fetch_wait_ms}"
    ensure_topics(settings, [TopicSpec(topic, settings.topic_partitions)])
    n = max(1, int(rate * seconds))
    producer = SyncProducer(settings, **{"linger.ms": linger_ms})

    def produce() -> None:
        start = time.monotonic()
        for i in range(n):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the load
            producer.produce(topic, b"x" * 300, str(i).encode())
        producer.flush()

    async def consume() -> list[float]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=settings.bootstrap_servers,
            auto_offset_reset="latest",
            fetch_max_wait_ms=fetch_wait_ms,
        )
        await consumer.start()
        lags: list[float] = []
        try:
            await consumer.seek_to_end()
            sender = threading.Thread(target=produce, daemon=True)
            sender.start()
            deadline = time.monotonic() + seconds + 30
            while len(lags) < n and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                now_ms = time.time() * 1000
                lags.extend(now_ms - r.timestamp for rs in batch.values() for r in rs)
            sender.join()
        finally:
            await consumer.stop()
        return lags

    lags = asyncio.run(consume())
    return {"p50_ms": pct(lags, 50), "p99_ms": pct(lags, 99)}
