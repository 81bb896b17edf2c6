"""On Apache Kafka, partitions added to a live partner's request topic
(`topics grow`, CreatePartitions) are picked up by the running workers without a
restart and lose nothing: records a fresh producer puts on the new partitions are
served, and so are those a producer with the older view still places by the old
count; each request once."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.client import PartnerClient, build_request
from pipeline.dev.harness import CLI, MODEL, Key, Stack
from pipeline.kafka.clients import list_topics
from pipeline.lifecycle.placement import partition_for
from pipeline.partners import requests_topic
from tests.integration.stack import kafka_only, kafka_stack

pytestmark = kafka_only("CreatePartitions")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield from kafka_stack(tmp_path)


def _send(client: PartnerClient, n: int, label: str) -> list[Key]:
    keys = []
    for i in range(n):
        request = build_request("grower", f"{label} {i}", model=MODEL, max_tokens=8)
        keys.append(("grower", client.send(request)))
    client.flush()
    return keys


def test_added_partitions_are_served_by_running_workers_and_nothing_is_lost(
    stack: Stack,
) -> None:
    stack.add_partner("grower")
    first, second = stack.start_worker("w1"), stack.start_worker("w2")
    stale = stack.client("grower")  # its producer keeps the 4-partition view for a while
    keys = _send(stale, 40, "before")
    stack.outcomes({"grower"}, lambda o: o.complete(keys), 60)

    grow = subprocess.run(
        [*CLI, "topics", "grow", "--partner", "grower", "--partitions", "8"],
        env=stack.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert grow.returncode == 0, grow.stderr
    assert grow.stdout.strip() == f"{requests_topic('grower')}: 4 -> 8 partitions"
    assert list_topics(stack.settings)[requests_topic("grower")] == 8

    fresh = PartnerClient(stack.settings, "grower", stack.secrets["grower"], stack.codec)
    new_keys = _send(fresh, 60, "after, fresh view")
    assert any(partition_for(k[1].encode(), 8) >= 4 for k in new_keys)
    # served, so the workers rebalanced onto the new partitions (no restart)
    stack.outcomes({"grower"}, lambda o: o.complete(new_keys), 120)
    # a producer that still has the 4-partition view (librdkafka refreshes every
    # 30 s, the Java client every 5 min) places keys by the old count
    old_keys = []
    for i in range(60):
        request = build_request("grower", f"after, old view {i}", model=MODEL, max_tokens=8)
        key = request["request_id"].encode()
        value = stack.codec.encode("ClaudeRequest", request, requests_topic("grower"))
        stale.send_raw(key, value, partition=partition_for(key, 4))
        old_keys.append(("grower", request["request_id"]))
    stale.flush()
    moved = [
        k for k in old_keys if partition_for(k[1].encode(), 8) != partition_for(k[1].encode(), 4)
    ]
    assert moved, "no key of the old view's records would move: the test tests nothing"

    everything = keys + new_keys + old_keys
    got = stack.outcomes({"grower"}, lambda o: o.complete(everything), 120)
    assert [k for k in everything if k not in got.responses] == [], "a request was lost"
    assert [k for k in everything if len(got.responses[k]) != 1] == [], "served twice"
    assert all(got.responses[k][0]["status"] == "ok" for k in everything)
    assert [k for k in everything if got.dead.get(k)] == []  # none refused for its partition
    assert first.alive()  # no restart
    assert second.alive()
