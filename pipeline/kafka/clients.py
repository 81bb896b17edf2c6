"""Kafka plumbing for the CLI and admin paths (confluent-kafka, synchronous).

The worker's hot path goes through Faust; these helpers serve commands and
start-up: provisioning topics, producing a few records, reading a topic from
the beginning to its current end (or following it).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from pipeline.config import Settings
from pipeline.errors import BrokerError, ConfigError
from pipeline.factory import client_config, unreachable
from pipeline.partners import (
    DLQ_TOPIC,
    PARTNERS_TOPIC,
    STATE_TOPIC,
    USAGE_TOPIC,
    requests_topic,
    responses_topic,
)

Headers = list[tuple[str, bytes]]

#: How long the state log keeps an entry not written again: longer than a month,
#: the longest budget period.
STATE_RETENTION_MS = 40 * 86_400_000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def large(settings: Settings) -> dict[str, str]:
    """Topic config for records up to `max_record_bytes` (Kafka's default stops near 1 MB)."""
    return {"max.message.bytes": str(settings.max_message_bytes)}


def core_topics(settings: Settings) -> list[TopicSpec]:
    n = settings.topic_partitions
    return [
        TopicSpec(USAGE_TOPIC, n),
        TopicSpec(DLQ_TOPIC, n, large(settings)),
        # Compacted: the latest config per partner_id is all a worker needs.
        TopicSpec(PARTNERS_TOPIC, 1, {"cleanup.policy": "compact"}),
        # Every worker reads all of it: one partition keeps one order. Compacted
        # (an entry's latest value is all that counts) and bounded in time: a
        # spend tally lives for its month, a served marker for minutes.
        TopicSpec(
            STATE_TOPIC,
            1,
            {"cleanup.policy": "compact,delete", "retention.ms": str(STATE_RETENTION_MS)},
        ),
    ]


def partner_topics(settings: Settings, partner_id: str) -> list[TopicSpec]:
    n = settings.topic_partitions
    return [
        TopicSpec(requests_topic(partner_id), n, large(settings)),
        TopicSpec(responses_topic(partner_id), n, large(settings)),
    ]


#: Metadata records one CreateTopics request may make. A KRaft controller refuses
#: a request of more than `max.records.per.user.op` (10,000 by default: a record
#: per topic, per partition and per config) with POLICY_VIOLATION "Unable to
#: perform excessively large batch operation": a thousand partners' topics are
#: about 14,000. Half of it leaves room for a broker configured lower.
MAX_RECORDS_PER_CREATE = 5_000


def create_batches(
    specs: Sequence[TopicSpec], budget: int = MAX_RECORDS_PER_CREATE
) -> list[list[TopicSpec]]:
    """`specs` in order, cut into requests of at most `budget` metadata records
    each (a topic bigger than the budget goes alone)."""
    batches: list[list[TopicSpec]] = []
    used = budget
    for spec in specs:
        records = 1 + spec.partitions + len(spec.config)
        if used + records > budget:
            batches.append([])
            used = 0
        batches[-1].append(spec)
        used += records
    return batches


def ensure_topics(
    settings: Settings, specs: Sequence[TopicSpec], timeout: float = 15.0
) -> list[str]:
    """Create the topics that do not exist yet; return the names created (idempotent)."""
    if not specs:
        return []
    admin = AdminClient(client_config(settings))
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise unreachable(settings, str(exc.args[0] if exc.args else exc)) from None
    wanted = {s.name: s for s in specs if s.name not in existing}
    if not wanted:
        return []
    created = []
    for batch in create_batches(list(wanted.values())):
        created.extend(_create(admin, settings, batch, timeout))
    return sorted(created)


def _create(
    admin: AdminClient, settings: Settings, specs: Sequence[TopicSpec], timeout: float
) -> list[str]:
    futures = admin.create_topics(
        [
            NewTopic(
                s.name,
                num_partitions=s.partitions,
                replication_factor=settings.replication_factor,
                config=s.config,
            )
            for s in specs
        ],
        request_timeout=timeout,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # created concurrently by another worker or admin
            raise BrokerError(f"cannot create topic {name}: {exc}") from exc
    return created


def grow_topic(settings: Settings, topic: str, total: int, timeout: float = 15.0) -> int:
    """Give `topic` `total` partitions (CreatePartitions); returns how many it had."""
    from confluent_kafka.admin import NewPartitions  # type: ignore[attr-defined]

    before = list_topics(settings, timeout).get(topic)
    if before is None:
        raise ConfigError(f"topic {topic} does not exist (topics create makes it)")
    if total <= before:
        raise ConfigError(f"{topic} has {before} partitions: Kafka can only add partitions")
    admin = AdminClient(client_config(settings))
    try:
        for future in admin.create_partitions([NewPartitions(topic, total)]).values():
            future.result(timeout)
    except KafkaException as exc:
        raise BrokerError(f"cannot add partitions to {topic}: {exc.args[0]}") from None
    return before


def list_topics(settings: Settings, timeout: float = 15.0) -> dict[str, int]:
    admin = AdminClient(client_config(settings))
    try:
        meta = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise unreachable(settings, str(exc.args[0] if exc.args else exc)) from None
    return {name: len(t.partitions) for name, t in meta.topics.items()}


class SyncProducer:
    """A confluent-kafka producer whose `flush()` raises if any delivery failed."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        conf: dict[str, Any] = {
            **client_config(settings),
            "acks": "all",
            "linger.ms": 5,
            "message.max.bytes": settings.max_message_bytes,
            "enable.idempotence": str(settings.broker_profile.idempotent_producers).lower(),
            # Kafka's default partitioner (the Java client's, and aiokafka's), not
            # librdkafka's CRC32 default: the worker checks a request record sits in
            # the partition its key gives (pipeline/lifecycle/placement.py).
            "partitioner": "murmur2_random",
            # partitions added to a topic are used within this (librdkafka: 5 min)
            "topic.metadata.refresh.interval.ms": 30_000,
        }
        conf.update(overrides)
        self.config = conf
        self._producer = Producer(conf)
        self._errors: list[str] = []

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err.str()}")

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> None:
        where: dict[str, Any] = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=list(headers or []),
                    on_delivery=self._on_delivery,
                    **where,
                )
                break
            except BufferError:
                self._producer.poll(0.1)  # local queue full: let deliveries drain
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise BrokerError(f"{remaining} records not delivered within {timeout:.0f} s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise BrokerError(f"{len(errors)} records failed: {errors[0]}")


#: The group id of the operator's readers (dlq, usage, inspect); a partner's
#: readers use one under its own prefix (`partner_reader_group`), which its ACLs grant.
CLI_GROUP = "claude-pipeline-cli"


def reader(settings: Settings, group_id: str | None = None) -> Consumer:
    """A consumer that never joins its group or commits: it assigns partitions
    itself (librdkafka requires a group.id; an offset fetch reads that group's)."""
    return Consumer(
        {
            **client_config(settings),
            "group.id": group_id or CLI_GROUP,
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
            # what partners read: never an outcome whose transaction was aborted
            # (librdkafka's default, stated because delivery depends on it)
            "isolation.level": "read_committed",
        }
    )


def read_topics(
    settings: Settings,
    topics: Iterable[str],
    *,
    follow: bool = False,
    from_end: bool = False,
    idle_timeout: float | None = None,
    timeout: float = 15.0,
    group_id: str | None = None,
) -> Iterator[Message]:
    """Every record of `topics`, from the beginning (or the end) to the current end.

    With `follow`, keep yielding new records until the caller stops iterating or
    nothing arrives for `idle_timeout` seconds.
    """
    consumer = reader(settings, group_id)
    try:
        meta = consumer.list_topics(timeout=timeout)
        tps: list[TopicPartition] = []
        for topic in topics:
            t = meta.topics.get(topic)
            if t is None or t.error is not None:
                continue
            start = OFFSET_END if from_end else OFFSET_BEGINNING
            tps.extend(TopicPartition(topic, p, start) for p in t.partitions)
        if not tps:
            return
        consumer.assign(tps)
        at_end: set[tuple[str, int]] = set()
        last = time.monotonic()
        while True:
            msg = consumer.poll(0.2)
            if msg is None:
                if follow and idle_timeout is not None and time.monotonic() - last > idle_timeout:
                    return
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_end.add((msg.topic() or "", msg.partition() or 0))
                    if not follow and len(at_end) >= len(tps):
                        return
                    continue
                what = msg.topic() or ", ".join(sorted({tp.topic for tp in tps}))
                raise BrokerError(f"reading {what}: {err.str()}")
            last = time.monotonic()
            yield msg
    finally:
        consumer.close()


def end_offsets(
    settings: Settings, topic: str, timeout: float = 15.0, group_id: str | None = None
) -> list[TopicPartition]:
    """The current end of every partition of `topic`."""
    consumer = reader(settings, group_id)
    try:
        meta = consumer.list_topics(topic, timeout=timeout)
        t = meta.topics.get(topic)
        if t is None or t.error is not None:
            raise BrokerError(f"topic {topic} does not exist")
        ends = []
        for p in t.partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            ends.append(TopicPartition(topic, p, high))
        return ends
    finally:
        consumer.close()


def read_from(
    settings: Settings, start: list[TopicPartition], timeout: float, group_id: str | None = None
) -> Iterator[Message]:
    """Records from the given offsets on, until `timeout` seconds pass."""
    consumer = reader(settings, group_id)
    try:
        consumer.assign(start)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            yield msg
    finally:
        consumer.close()
