"""Does fetching large records make the embedded broker burn CPU? Twelve records
of SIZE bytes, one every 1.6 s (the poison benchmark's rate of its heavy kinds),
read by a bare aiokafka consumer with a max partition fetch of FETCH bytes (the
worker's is 256 KB); prints the broker's CPU over the run and the fetches made.

    python scripts/experiments/heavy_fetch.py FETCH [SIZE [SMALL]]

With SMALL, that many 300-byte records follow each large one on the same topic
(the poison benchmark interleaves small bad records with the heavy ones).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

import embedded  # scripts/experiments/embedded.py
from aiokafka.consumer import fetcher as afetch
from embedded import cpu_s, embedded_broker

from pipeline.kafka.clients import SyncProducer, TopicSpec, ensure_topics

MB = 1024 * 1024
fetches = 0
proc_fetch_request = afetch.Fetcher._proc_fetch_request


async def _counted(self: Any, *args: Any) -> Any:
    global fetches
    fetches += 1
    return await proc_fetch_request(self, *args)


afetch.Fetcher._proc_fetch_request = _counted  # type: ignore[method-assign]


def main(fetch_bytes: int, size: int, small: int) -> None:
    with embedded_broker("heavy-fetch") as (settings, pid):
        ensure_topics(settings, [TopicSpec("heavy", 4, {"max.message.bytes": str(20 * MB)})])
        producer = SyncProducer(settings, **{"message.max.bytes": 20 * MB})

        def produce() -> None:
            for i in range(12):
                producer.produce("heavy", b"\x00" * size, str(i).encode())
                for j in range(small):  # small records after it, on every partition
                    producer.produce("heavy", b"x" * 300, f"{i}.{j}".encode())
                    time.sleep(1.6 / small)  # pacing the load
                producer.flush()
                if not small:
                    time.sleep(1.6)  # pacing the load

        async def consume() -> None:
            consumer = embedded.consumer(
                settings, "heavy", auto_offset_reset="latest", max_partition_fetch_bytes=fetch_bytes
            )
            await consumer.start()
            await consumer.seek_to_end()
            cpu0, t0 = cpu_s(pid), time.monotonic()
            sender = threading.Thread(target=produce)
            sender.start()
            got = 0
            while got < 12 * (1 + small) and time.monotonic() - t0 < 60:
                batch = await consumer.getmany(timeout_ms=500)
                got += sum(len(rs) for rs in batch.values())
            sender.join()
            took = time.monotonic() - t0
            print(
                f"fetch {fetch_bytes} B, records of {size} B, {small} small after each: "
                f"{got} read in {took:.1f} s, "
                f"broker {(cpu_s(pid) - cpu0) / took:.2f} core, {fetches} fetches"
            )
            await consumer.stop()

        asyncio.run(consume())


if __name__ == "__main__":
    main(
        int(sys.argv[1]),
        int(sys.argv[2]) if len(sys.argv) > 2 else 10 * MB,
        int(sys.argv[3]) if len(sys.argv) > 3 else 0,
    )
