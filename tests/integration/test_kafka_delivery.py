"""On Apache Kafka, a response the broker refuses is never committed past: the
worker retries the publish, then stops saying why, and the request's offset
stays uncommitted, so the next worker serves it (once) when the broker takes it.

The refusal is Kafka's own: the partner's responses topic is given a
`max.message.bytes` smaller than any response (MESSAGE_TOO_LARGE, which
librdkafka does not retry), and set back before the second worker starts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from pipeline.dev.harness import Stack
from pipeline.dev.procs import wait_until
from pipeline.factory import client_config
from pipeline.kafka.clients import list_topics
from pipeline.partners import requests_topic, responses_topic
from tests.integration.stack import kafka_only, kafka_stack

pytestmark = kafka_only("a topic's max.message.bytes")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield from kafka_stack(tmp_path)


def _limit_records(stack: Stack, topic: str, max_bytes: int | None) -> None:
    """Set the topic's record limit (None: back to the broker's default)."""
    admin = AdminClient(client_config(stack.settings))
    op = AlterConfigOpType.SET if max_bytes is not None else AlterConfigOpType.DELETE
    entry = ConfigEntry("max.message.bytes", str(max_bytes or ""), incremental_operation=op)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def _committed(stack: Stack, topic: str) -> list[int]:
    partitions = list_topics(stack.settings)[topic]
    reader = Consumer({**client_config(stack.settings), "group.id": stack.settings.group_id})
    try:
        asked = [TopicPartition(topic, p) for p in range(partitions)]
        return [tp.offset for tp in reader.committed(asked, timeout=10)]
    finally:
        reader.close()


def test_a_refused_response_is_not_committed_past_and_is_served_after(stack: Stack) -> None:
    stack.add_partner("refused")
    _limit_records(stack, responses_topic("refused"), 64)
    first = stack.start_worker("w1")
    key = stack.send("refused", "answer me")  # the topic's only record: offset 0

    wait_until(lambda: not first.alive(), 90, "the worker to stop")
    log = stack.worker_log("w1")
    refused = [e for e in log if e.get("msg") == "publish failed, retrying"]
    assert refused
    assert "Message size too large" in refused[0]["error"]
    stopped = [e for e in log if e.get("level") == "critical"]
    assert stopped
    assert stopped[0]["msg"] == "fatal error: stopping the worker"
    assert all(offset <= 0 for offset in _committed(stack, requests_topic("refused")))

    _limit_records(stack, responses_topic("refused"), None)
    stack.start_worker("w2")
    got = stack.outcomes({"refused"}, lambda o: o.complete([key]), 60)
    assert [r["status"] for r in got.responses[key]] == ["ok"]  # served once, after all
