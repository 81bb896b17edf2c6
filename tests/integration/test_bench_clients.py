"""`bench clients` measures both Kafka clients on whichever broker the suite runs
(on Apache Kafka its aiokafka lane found no partitions of a topic created after
it started, and the bench stopped: "the aiokafka client did not start")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.dev.bench.clients import kafka_clients
from pipeline.dev.harness import Stack

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        s.close()


def test_each_client_serves_every_record_and_reports_its_cpu(stack: Stack) -> None:
    got = kafka_clients(stack.settings, 200, 400.0, stack.env)
    assert got["aiokafka_cpu_ms_per_request"] > 0
    assert got["confluent_cpu_ms_per_request"] > 0
    # librdkafka's work is in C threads: far less of this process's CPU
    assert got["cpu_ratio_confluent_to_aiokafka"] < 1
