"""The embedded broker's CPU over 40 s while 300 records/s arrive on one topic,
each record a batch of its own (linger 0, flushed one by one, as the worker's
outputs and state markers mostly are), with and without a consumer fetching
them (10 ms fetch waits, as the dev profile's):

    python scripts/experiments/broker_growth.py produce|consume
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import embedded  # scripts/experiments/embedded.py
from embedded import cpu_s, embedded_broker

from pipeline.kafka.clients import SyncProducer, TopicSpec, ensure_topics

SECONDS = 40.0


def main(mode: str) -> None:
    with embedded_broker("growth") as (settings, pid):
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
            consumer = embedded.consumer(settings, "grow", auto_offset_reset="earliest")
            await consumer.start()
            while time.monotonic() < until:
                await consumer.getmany(timeout_ms=200)
            await consumer.stop()

        threads = [threading.Thread(target=produce)]
        if mode == "consume":
            threads.append(threading.Thread(target=lambda: asyncio.run(consume())))
        for t in threads:
            t.start()
        before, then = cpu_s(pid), time.monotonic()
        while time.monotonic() < until:
            time.sleep(5)  # sampling the broker's CPU
            used, now = cpu_s(pid), time.monotonic()
            print(f"{mode} {now - start:4.0f} s: broker {(used - before) / (now - then):.2f} core")
            before, then = used, now
        for t in threads:
            t.join()


if __name__ == "__main__":
    main(sys.argv[1])
