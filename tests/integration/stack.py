"""The integration tests' pipeline: the same harness the demo and the benchmarks use,
and what the tests of behaviour only Apache Kafka has share."""

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.dev.engines import engine_of
from pipeline.dev.harness import DEFAULT_KEY, MODEL, Key, Outcomes, Stack

__all__ = ["DEFAULT_KEY", "MODEL", "Key", "Outcomes", "Stack", "kafka_only", "kafka_stack"]


def kafka_only(what: str) -> list[pytest.MarkDecorator]:
    """A module's marks when `what` (say, "compaction") needs Apache Kafka."""
    return [
        pytest.mark.integration,
        pytest.mark.skipif(
            engine_of(None) != "kafka",
            reason=f"needs Apache Kafka for {what}: PIPELINE_TEST_BROKER=kafka (CI runs it)",
        ),
    ]


def kafka_stack(where: Path, **broker: Any) -> Iterator[Stack]:
    """A fixture's body: a stack on Apache Kafka of its own, closed after the test."""
    stack = Stack(where, engine="kafka", **broker)
    try:
        yield stack
    finally:
        stack.close()


def killing_new_workers(stack: Stack) -> Iterator[Stack]:
    """A fixture's body: the stack, with every worker the test starts killed after it."""
    before = set(stack.workers)
    yield stack
    for name in set(stack.workers) - before:
        proc = stack.workers.pop(name)[0]
        proc.signal(signal.SIGKILL)
        proc.stop()
