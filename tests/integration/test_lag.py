"""Each partner's backlog, measured against the run's broker: end offsets minus
the group's committed offsets, in a few requests whatever the partition count."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.config import Settings
from pipeline.dev.engines import engine_of, start_broker
from pipeline.factory import client_config
from pipeline.kafka.clients import SyncProducer, ensure_topics, partner_topics
from pipeline.kafka.lag import GroupLag, backlog_by_partner
from pipeline.partners import requests_topic

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    broker = start_broker(engine_of(None), Path(tmp_path_factory.mktemp("lag")))
    try:
        yield Settings(bootstrap_servers=broker.bootstrap, profile="dev", group_id="lag-test")
    finally:
        broker.stop()


def test_the_backlog_is_what_the_group_has_not_committed_on_every_partition(
    settings: Settings,
) -> None:
    # Before, a watermark query per partition: 4,000 round trips every interval
    # with a thousand partners. Now one ListOffsets each for start and end.
    partners = [f"lag{i}" for i in range(12)]
    ensure_topics(settings, [s for p in partners for s in partner_topics(settings, p)])
    producer = SyncProducer(settings)
    for i, partner in enumerate(partners):
        for n in range(i):  # partner i has i records on partition 0
            producer.produce(requests_topic(partner), b"x", key=f"{n}".encode(), partition=0)
            # a batch each: Tansu 0.6 answers ListOffsets(latest) with its last
            # batch's base offset plus one (docs/kafka.md)
            producer.flush()
    # the group committed 2 of lag5's records, and one of lag1's
    group = Consumer({**client_config(settings), "group.id": settings.group_id})
    group.commit(
        offsets=[
            TopicPartition(requests_topic("lag5"), 0, 2),
            TopicPartition(requests_topic("lag1"), 0, 1),
        ],
        asynchronous=False,
    )
    group.close()
    owned = {(requests_topic(p), n) for p in partners for n in range(settings.topic_partitions)}
    probe = GroupLag(settings)
    try:
        lags = probe.measure(owned)
    finally:
        probe.close()
    assert len(lags) == len(owned)
    backlog = backlog_by_partner(lags)
    expected = {p: i for i, p in enumerate(partners) if i}
    expected["lag5"] = 3
    del expected["lag1"]
    assert {p: n for p, n in backlog.items() if n} == expected
