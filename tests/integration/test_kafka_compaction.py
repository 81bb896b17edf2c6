"""On Apache Kafka, `claude.partners` really compacts: a partner's older records go,
a removed partner keeps only its removal record, a tombstoned one goes entirely,
and a worker started after compaction rebuilds exactly the live registry and
serves by each partner's latest configuration."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from pipeline.dev.harness import Stack
from pipeline.kafka.admin import publish_partners
from pipeline.kafka.clients import read_topics
from pipeline.partners import PARTNERS_TOPIC
from tests.integration.stack import kafka_only, kafka_stack

pytestmark = kafka_only("compaction")

#: Roll segments fast and clean whatever is dirty (the test's settings, not production's).
FAST_COMPACTION = {
    "segment.ms": "300",
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
    "delete.retention.ms": "200",
}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield from kafka_stack(tmp_path, broker_settings={"log.cleaner.backoff.ms": "200"})


def _records(stack: Stack) -> Counter[str]:
    """How many records each key has on claude.partners now."""
    return Counter(
        (msg.key() or b"").decode() for msg in read_topics(stack.settings, [PARTNERS_TOPIC])
    )


def test_the_registry_compacts_and_a_worker_started_after_rebuilds_exactly_the_live_partners(
    stack: Stack,
) -> None:
    stack.add_partner("live")
    for cap in (512, 256, 128, 64):  # the last one is what must survive
        stack.update_partner("live", max_tokens_cap=cap)
    stack.add_partner("gone")
    stack.update_partner("gone", weight=3)
    stack.remove_partner("gone")
    stack.add_partner("tomb")
    publish_partners(stack.settings, stack.codec, ["tomb"])  # a tombstone
    before = _records(stack)
    assert (before["live"], before["gone"], before["tomb"]) == (5, 3, 2)

    admin = AdminClient({"bootstrap.servers": stack.settings.bootstrap_servers})
    topic = ConfigResource(
        ResourceType.TOPIC,
        PARTNERS_TOPIC,
        incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
            for k, v in FAST_COMPACTION.items()
        ],
    )
    for future in admin.incremental_alter_configs([topic]).values():
        future.result(15)
    deadline = time.monotonic() + 90
    after = before
    while time.monotonic() < deadline:
        # a record after segment.ms rolls the segment holding the older ones;
        # the filler's own older copies compact away too
        publish_partners(stack.settings, stack.codec, ["filler"])
        after = _records(stack)
        if (after["live"], after["gone"], after["tomb"]) == (1, 1, 0):
            break
        time.sleep(0.5)
    assert (after["live"], after["gone"], after["tomb"]) == (1, 1, 0), after

    stack.start_worker()
    (started,) = stack.wait_log(lambda e: e.get("msg") == "worker starting")
    # the removal survived compaction (had it gone, gone's weight-3 record would
    # be its latest and it would be live again); the tombstoned one is gone
    assert started["partners"] == ["live"]
    keys = [stack.send("live", "hi", max_tokens=32), stack.send("live", "too long", max_tokens=100)]
    got = stack.outcomes({"live"}, lambda o: o.complete(keys), 60)
    assert got.responses[keys[0]][0]["status"] == "ok"
    assert got.reason(keys[1]) == "invalid_request"
    assert "cap of 64" in got.dead[keys[1]][0]["detail"]  # the latest record won
