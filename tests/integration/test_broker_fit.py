"""A worker whose profile the broker cannot serve says so in one line and exits 2,
instead of a traceback deep in aiokafka (production on the embedded broker: no
InitProducerId) or a join that never ends (dev on Apache Kafka: a session below
the broker's minimum)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline.dev.engines import engine_of
from pipeline.dev.harness import CLI, Stack

pytestmark = pytest.mark.integration


def _worker(stack: Stack, **env: str) -> subprocess.CompletedProcess[str]:
    stack.add_partner("fit")  # a partner, so a worker that started would join its group
    return subprocess.run(
        [*CLI, "worker"],
        env={**stack.env, "PIPELINE_METRICS_PORT": "0", **env},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_the_production_profile_on_the_embedded_broker_says_what_to_set(tmp_path: Path) -> None:
    stack = Stack(tmp_path, engine="tansu")
    try:
        env = {k: v for k, v in stack.env.items() if k != "PIPELINE_PROFILE"}
        out = subprocess.run(
            [*CLI, "worker"],
            env={**env, "PIPELINE_PROFILE": "production", "PIPELINE_METRICS_PORT": "0"},
            capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
    finally:
        stack.close()
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert "embedded one (Tansu)" in line
    assert "set PIPELINE_PROFILE=dev" in line


@pytest.mark.skipif(
    engine_of(None) != "kafka", reason="needs Apache Kafka: PIPELINE_TEST_BROKER=kafka"
)
def test_the_dev_profile_on_apache_kafka_says_what_to_set(tmp_path: Path) -> None:
    stack = Stack(tmp_path, engine="kafka")
    try:
        out = _worker(stack, PIPELINE_PROFILE="dev")
    finally:
        stack.close()
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert "2000 ms consumer session is outside this broker's" in line
    assert "(6000-1800000 ms)" in line
    assert "set PIPELINE_PROFILE=production" in line
