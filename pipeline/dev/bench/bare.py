"""Bare consumers of many partitions, side by side: how long a record produced to
one partition takes to reach a consumer assigned all of them, with librdkafka
(confluent-kafka) and with aiokafka (the worker's client under Faust). What the
partner count costs the Kafka client alone, with no worker around it."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Callable

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from pipeline.config import Settings
from pipeline.dev.bench.result import pct
from pipeline.dev.bench.rig import Rig
from pipeline.factory import client_config
from pipeline.kafka.consumer import fetch_wait_ms
from pipeline.partners import requests_topic

WARM_UP = 3
RESEND_S = 15.0
MAX_RESENDS = 10
#: What the records sent here start with (the partition holds the scenario's requests too).
MARK = b"bare:"
TIMEOUT_S = 30.0


def bare_consumers(rig: Rig, partner_ids: list[str], records: int) -> dict[str, float]:
    """p50 and p95 ms, produce to consume, for each client; records go one at a
    time to the first partition of `partner_ids[-1]` (the active partner's)."""
    settings = rig.stack.settings
    partitions = [
        (requests_topic(p), n) for p in partner_ids for n in range(settings.topic_partitions)
    ]
    wait_ms = fetch_wait_ms(settings, len(partitions))  # the worker's, for as many partitions
    target = requests_topic(partner_ids[-1])
    producer = Producer({**client_config(settings), "linger.ms": 0})
    sent = itertools.count()

    def send() -> bytes:
        """One marked record; returns its mark (a consumer waits for that one)."""
        mark = MARK + str(next(sent)).encode() + b":"
        producer.produce(target, value=mark + repr(time.time()).encode(), partition=0)
        producer.flush(TIMEOUT_S)
        return mark

    out: dict[str, float] = {}
    trials = _librdkafka(settings, partitions, wait_ms, send, records)
    out.update(trials.metrics("bare_librdkafka"))
    trials = asyncio.run(_aiokafka(settings.bootstrap_servers, partitions, wait_ms, send, records))
    out.update(trials.metrics("bare_aiokafka"))
    return out


def _age_ms(value: bytes) -> float:
    return (time.time() - float(value.rsplit(b":", 1)[1])) * 1000


class Trials:
    """Records sent one at a time, each waited for; one not seen within RESEND_S
    (a consumer still finding its start offsets) is sent again, up to a limit."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.latencies: list[float] = []
        self.sends = 0
        self.received = 0

    def more(self) -> bool:
        """Another record to send? Not once MAX_RESENDS were not seen: the
        scenario reports how many were missed instead of failing."""
        if self.sends - self.received > MAX_RESENDS:
            return False
        return len(self.latencies) < self.n

    def metrics(self, prefix: str) -> dict[str, float]:
        got = sorted(self.latencies)
        return {
            f"{prefix}_p50_ms": round(statistics.median(got), 1) if got else float("nan"),
            f"{prefix}_p95_ms": pct(got, 0.95),
            f"{prefix}_missed": float(self.sends - self.received),
        }

    def seen(self, value: bytes) -> None:
        self.sends += 1
        self.received += 1
        if self.received > WARM_UP:
            self.latencies.append(_age_ms(value))


def _librdkafka(
    settings: Settings,
    partitions: list[tuple[str, int]],
    wait_ms: int,
    send: Callable[[], bytes],
    n: int,
) -> Trials:
    consumer = Consumer(
        {
            **client_config(settings),
            "group.id": "bench-bare",
            "enable.auto.commit": "false",
            "fetch.wait.max.ms": wait_ms,
        }
    )
    consumer.assign([TopicPartition(t, p, OFFSET_END) for t, p in partitions])
    trials = Trials(n)
    try:
        while trials.more():
            mark = send()
            deadline = time.monotonic() + RESEND_S
            while time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                value = msg.value() if msg is not None and msg.error() is None else None
                if value and value.startswith(mark):
                    trials.seen(value)
                    break
            else:
                trials.sends += 1
    finally:
        consumer.close()
    return trials


async def _aiokafka(
    bootstrap: str,
    partitions: list[tuple[str, int]],
    wait_ms: int,
    send: Callable[[], bytes],
    n: int,
) -> Trials:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition as AioPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, fetch_max_wait_ms=wait_ms, enable_auto_commit=False
    )
    await consumer.start()
    trials = Trials(n)
    try:
        assigned = [AioPartition(t, p) for t, p in partitions]
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)
        loop = asyncio.get_running_loop()
        while trials.more():
            mark = await loop.run_in_executor(None, send)
            deadline = time.monotonic() + RESEND_S
            while time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                values = [m.value for ms in batches.values() for m in ms]
                marked = [v for v in values if v and v.startswith(mark)]
                if marked:
                    trials.seen(marked[0])
                    break
            else:
                trials.sends += 1
    finally:
        await consumer.stop()
    return trials
