"""The embedded broker's CPU over 40 s while 300 records/s arrive on one topic,
each record a batch of its own (linger 0, flushed one by one, as the worker's
outputs and state markers mostly are), with and without a consumer fetching
them (10 ms fetch waits, as the dev profile's):

    python scripts/experiments/broker_growth.py produce|consume
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from pipeline.config import Settings
from pipeline.devbroker import DevBroker
from pipeline.kafka import SyncProducer, TopicSpec, ensure_topics

SECONDS = 40.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(mode: str) -> None:
    broker = DevBroker(log_file=Path("/tmp/broker-growth.log"))  # noqa: S108
    broker.start()
    try:
        settings = Settings(bootstrap_servers=broker.bootstrap, profile="dev", broker="embedded")
        ensure_topics(settings, [TopicSpec("grow", 4)])
        producer = SyncProducer(settings, **{"linger.ms": 0})
        start = time.monotonic()
        until = start + SECONDS

        def produce() -> None:
            i = 0
            while time.monotonic() < until:
                producer.produce("grow", b"x" * 1000, str(i).encode())
                producer.flush()
                i += 1
                time.sleep(0.002)  # pacing the load

        async def consume() -> None:
            consumer = AIOKafkaConsumer(
                "grow",
                bootstrap_servers=broker.bootstrap,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=10,
            )
            await consumer.start()
            while time.monotonic() < until:
                await consumer.getmany(timeout_ms=200)
            await consumer.stop()

        threads = [threading.Thread(target=produce)]
        if mode == "consume":
            threads.append(threading.Thread(target=lambda: asyncio.run(consume())))
        for t in threads:
            t.start()
        pid = broker.pid
        if pid is None:
            raise SystemExit("the broker is not running")
        before, then = cpu_s(pid), time.monotonic()
        while time.monotonic() < until:
            time.sleep(5)  # sampling the broker's CPU
            used, now = cpu_s(pid), time.monotonic()
            print(f"{mode} {now - start:4.0f} s: broker {(used - before) / (now - then):.2f} core")
            before, then = used, now
        for t in threads:
            t.join()
    finally:
        broker.stop()


if __name__ == "__main__":
    main(sys.argv[1])
