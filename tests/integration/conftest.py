from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from pipeline.engines import engine_of
from pipeline.sim import SimConfig, SimServer

SimFactory = Callable[..., Awaitable[SimServer]]


def pytest_report_header(config: pytest.Config) -> str:
    engine = engine_of(None)
    what = "Apache Kafka 4.4 (KRaft, from Maven Central)" if engine == "kafka" else "Tansu"
    return f"broker: {engine}: {what} (PIPELINE_TEST_BROKER=tansu|kafka)"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fetch Apache Kafka's jars once, before parallel workers start brokers."""
    if engine_of(None) == "kafka" and not hasattr(session.config, "workerinput"):
        from pipeline.kafkabroker import classpath

        classpath()


@pytest.fixture
async def sim_factory() -> AsyncIterator[SimFactory]:
    """Start simulators on free ports; every one is stopped after the test."""
    started: list[SimServer] = []

    async def start(**config: Any) -> SimServer:
        server = SimServer(SimConfig(**config))
        await server.start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.stop()
