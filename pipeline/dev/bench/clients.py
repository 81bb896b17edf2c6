"""The Kafka clients' CPU per request, side by side: what the worker's transport
costs, and what librdkafka would cost in its place.

Records arrive at a steady rate, as partners send them. Each client, in a
process of its own, does a request's Kafka work for each: fetch the record,
produce its three outputs (a response, a usage record and a state marker, at
their usual sizes) and wait for them to be acknowledged. The process's CPU time
(every thread) from the first record to the last acknowledgement, divided by
the records, is the figure. aiokafka is the client Faust runs (here without
Faust, so its figure is a floor for the worker's transport); confluent-kafka is
librdkafka, whose fetching, batching and acknowledging run in C threads
outside the GIL.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

from pipeline.config import Settings
from pipeline.dev.bench.result import Result
from pipeline.factory import client_config
from pipeline.kafka.clients import SyncProducer, TopicSpec, ensure_topics, list_topics

#: A request record, and the three outputs of one request, at typical sizes.
REQUEST_BYTES = 700
OUTPUTS = (
    ("claude.bench.responses", 900),
    ("claude.bench.usage", 260),
    ("claude.bench.state", 120),
)
CLIENTS = ("aiokafka", "confluent")


def feed(settings: Settings, topic: str, n: int, rate: float) -> None:
    """`n` request records to `topic`, `rate` a second."""
    producer = SyncProducer(settings)
    value = b"r" * REQUEST_BYTES
    start = time.monotonic()
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the load
        producer.produce(topic, value, f"req-{i}".encode())
    producer.flush()


def measure(
    settings: Settings, client: str, n: int, rate: float, env: dict[str, str] | None = None
) -> dict[str, float]:
    """Run `client` in a fresh process over `n` records fed at `rate` a second; the
    child reads its connection settings (SASL on Apache Kafka) from `env`."""
    topic = f"claude.bench.in.{client}"
    ensure_topics(
        settings,
        [TopicSpec(topic, settings.topic_partitions)]
        + [TopicSpec(name, settings.topic_partitions) for name, _ in OUTPUTS],
    )
    args = [client, topic, str(n)]
    with subprocess.Popen(  # noqa: S603 (this module, our arguments)
        [sys.executable, "-m", "pipeline.dev.bench.clients", *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    ) as child:
        assert child.stdout is not None  # noqa: S101
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {client} client did not start")
        feed(settings, topic, n, rate)
        out, _ = child.communicate(timeout=120)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


def _with_aiokafka(settings: Settings, topic: str, n: int) -> float:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    async def run() -> float:
        conf = settings.aiokafka_config()
        consumer = AIOKafkaConsumer(**conf, fetch_max_wait_ms=10)
        producer = AIOKafkaProducer(**conf, linger_ms=2, acks="all")
        await consumer.start()
        await producer.start()
        try:
            # an unsubscribed aiokafka consumer knows no topic created after it
            # started (on Apache Kafka: "No partitions are currently assigned")
            parts = range(list_topics(settings)[topic])
            consumer.assign([TopicPartition(topic, p) for p in parts])
            await consumer.seek_to_beginning()
            _ready()
            acks: list[asyncio.Future[object]] = []
            seen, cpu = 0, 0.0
            while seen < n:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        if not seen:
                            cpu = time.process_time()
                        for name, size in OUTPUTS:
                            acks.append(await producer.send(name, b"o" * size, record.key))
                        seen += 1
            await asyncio.gather(*acks)
            return time.process_time() - cpu
        finally:
            await producer.stop()
            await consumer.stop()

    return asyncio.run(run())


def _with_confluent(settings: Settings, topic: str, n: int) -> float:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    conf = client_config(settings)
    consumer = Consumer({**conf, "group.id": "bench-clients", "fetch.wait.max.ms": 10})
    producer = Producer({**conf, "linger.ms": 2, "acks": "all"})
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    _ready()
    seen, cpu = 0, 0.0
    while seen < n:
        for record in consumer.consume(num_messages=500, timeout=0.5):
            if record.error() is not None:
                continue
            if not seen:
                cpu = time.process_time()
            for name, size in OUTPUTS:
                producer.produce(name, b"o" * size, record.key())
            seen += 1
        producer.poll(0)
    producer.flush()
    cpu = time.process_time() - cpu
    consumer.close()
    return cpu


def kafka_clients(
    settings: Settings, n: int, rate: float, env: dict[str, str] | None = None
) -> dict[str, float]:
    """CPU ms per request of each client, and confluent's share of aiokafka's."""
    metrics: dict[str, float] = {}
    for client in CLIENTS:
        got = measure(settings, client, n, rate, env)
        metrics[f"{client}_cpu_ms_per_request"] = got["cpu_ms_per_request"]
    metrics["cpu_ratio_confluent_to_aiokafka"] = round(
        metrics["confluent_cpu_ms_per_request"] / metrics["aiokafka_cpu_ms_per_request"], 3
    )
    return metrics


def scenario(quick: bool, say: Callable[[str], None], progress: object = None) -> Result:
    from pipeline.dev.bench.rig import NO_LIMITS, Rig

    rate = 300.0  # about one worker's throughput here
    n = int(rate * (5 if quick else 20))
    params = {"requests": n, "rate": rate, "outputs_per_request": len(OUTPUTS)}
    result = Result("clients", params)
    with Rig() as rig:
        rig.start(NO_LIMITS)
        say(f"{n} requests' Kafka work at {rate:.0f}/s with each client: {', '.join(CLIENTS)}")
        result.metrics = kafka_clients(rig.stack.settings, n, rate, rig.stack.env)
    return result


def main(argv: list[str]) -> None:
    client, topic, n = argv[0], argv[1], int(argv[2])
    run = {"aiokafka": _with_aiokafka, "confluent": _with_confluent}[client]
    cpu = run(Settings.from_env(), topic, n)
    sys.stdout.write(json.dumps({"cpu_ms_per_request": round(cpu * 1000 / n, 4)}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
