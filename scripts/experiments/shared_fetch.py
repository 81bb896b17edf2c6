"""Small records' lag on one topic while 10 MB records land on another, one
consumer fetching both (as the worker's one consumer fetches every partner's
topic), with a given fetch_max_bytes; HEAVY_S 0 sends no large records (the
baseline); "apart" fetches the heavy topic apart once it has seen a heavy batch
(`faustadapter.fetch_heavy_apart`, as the worker does).

    python scripts/experiments/shared_fetch.py FETCH_MAX_BYTES [HEAVY_S [apart]]
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import embedded  # scripts/experiments/embedded.py
from embedded import embedded_broker

from pipeline.dev.bench.result import pct
from pipeline.kafka.clients import SyncProducer, TopicSpec, ensure_topics
from pipeline.kafka.faustadapter import fetch_heavy_apart
from pipeline.kafka.fetchlanes import HeavyTopics

MB = 1024 * 1024
SECONDS = 20.0


def main(fetch_max_bytes: int, heavy_every_s: float, apart: bool) -> None:
    with embedded_broker("shared-fetch") as (settings, _pid):
        big = {"max.message.bytes": str(20 * MB)}
        ensure_topics(settings, [TopicSpec("heavy", 1, big), TopicSpec("light", 1, {})])
        heavy = SyncProducer(settings, **{"message.max.bytes": 20 * MB, "linger.ms": 0})
        light = SyncProducer(settings, **{"linger.ms": 0})
        until = time.monotonic() + SECONDS

        def produce_heavy() -> None:
            while heavy_every_s and time.monotonic() < until:
                heavy.produce("heavy", b"\0" * (10 * MB), b"heavy", partition=0)
                heavy.flush()
                time.sleep(heavy_every_s)  # pacing the load

        def produce_light() -> None:
            i = 0
            while time.monotonic() < until:
                light.produce("light", b"x" * 300, str(i).encode(), partition=0)
                light.flush()
                i += 1
                time.sleep(0.01)  # pacing the load

        lags: list[float] = []

        async def consume() -> None:
            consumer = embedded.consumer(
                settings,
                "heavy",
                "light",
                auto_offset_reset="latest",
                max_partition_fetch_bytes=256 * 1024,
                fetch_max_bytes=fetch_max_bytes,
            )
            await consumer.start()
            await consumer.seek_to_end()
            if apart:
                fetch_heavy_apart(consumer, HeavyTopics(256 * 1024))
            senders = [
                threading.Thread(target=produce_heavy),
                threading.Thread(target=produce_light),
            ]
            for t in senders:
                t.start()
            while time.monotonic() < until + 2:
                batch = await consumer.getmany(timeout_ms=200)
                now_ms = time.time() * 1000
                for tp, records in batch.items():
                    if tp.topic == "light":
                        lags.extend(now_ms - r.timestamp for r in records)
            for t in senders:
                t.join()
            await consumer.stop()

        asyncio.run(consume())
        print(
            f"fetch_max_bytes {fetch_max_bytes}, a 10 MB record every {heavy_every_s} s"
            f"{', fetched apart' if apart else ''}: "
            f"small records' lag p50 {pct(lags, 50)} p90 {pct(lags, 90)} p99 {pct(lags, 99)} ms"
        )


if __name__ == "__main__":
    main(
        int(sys.argv[1]),
        float(sys.argv[2]) if len(sys.argv) > 2 else 0.8,
        sys.argv[3:4] == ["apart"],
    )
