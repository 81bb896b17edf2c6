"""A bare aiokafka consumer's lag on a probe topic (50 records/s, 1 ms fetch wait),
in a process of its own, beside: nothing (`none`), the latency benchmark's load
with no worker (`load`), or that load with a worker serving it (`worker`).

    python scripts/experiments/consumer_probe.py none|load|worker
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

from aiokafka import AIOKafkaConsumer

from pipeline.config import Settings
from pipeline.dev.bench.result import pct
from pipeline.dev.bench.rig import NO_LIMITS, Rig
from pipeline.kafka.clients import SyncProducer, TopicSpec, ensure_topics

RATE, SECONDS, TOPIC = 138.0, 20.0, "probe.lag"


def probe(settings: Settings, until: float) -> list[float]:
    ensure_topics(settings, [TopicSpec(TOPIC, 4)])
    producer = SyncProducer(settings, **{"linger.ms": 0})
    lags: list[float] = []

    def produce() -> None:
        i = 0
        while time.monotonic() < until:
            producer.produce(TOPIC, b"x" * 300, str(i).encode())
            i += 1
            time.sleep(0.02)  # pacing the probe: 50 records/s
        producer.flush()

    async def consume() -> None:
        consumer = AIOKafkaConsumer(
            TOPIC,
            bootstrap_servers=settings.bootstrap_servers,
            auto_offset_reset="latest",
            fetch_max_wait_ms=1,
        )
        await consumer.start()
        await consumer.seek_to_end()
        sender = threading.Thread(target=produce)
        sender.start()
        while time.monotonic() < until + 2:
            batch = await consumer.getmany(timeout_ms=200)
            now_ms = time.time() * 1000
            lags.extend(now_ms - r.timestamp for rs in batch.values() for r in rs)
        sender.join()
        await consumer.stop()

    asyncio.run(consume())
    return lags


def main(mode: str) -> None:
    with Rig() as rig:
        rig.start(
            [*NO_LIMITS, "--latency-ms", "200", "--ms-per-output-token", "0"],
            {"PIPELINE_MAX_IN_FLIGHT": "2048", "PIPELINE_FETCH_MAX_WAIT_MS": "1"},
        )
        partners = ["p1", "p2", "p3"]
        rig.add_partners(dict.fromkeys(partners, 1))
        if mode == "worker":
            rig.start_worker()
            time.sleep(3)  # pacing: the worker joins its group first
        until = time.monotonic() + SECONDS
        sent: list[list[str]] = [[] for _ in partners]
        load = (
            [
                rig.paced(pid, RATE / len(partners), SECONDS, out, linger_ms=0.0)
                for pid, out in zip(partners, sent, strict=True)
            ]
            if mode != "none"
            else []
        )
        lags = probe(rig.stack.settings, until)
        for t in load:
            t.join()
    print(f"{mode}: probe lag p50 {pct(lags, 50)} p90 {pct(lags, 90)} p99 {pct(lags, 99)} ms")


if __name__ == "__main__":
    main(sys.argv[1])
