from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from pipeline.dev.engines import engine_of
from pipeline.dev.sim import SimConfig, SimServer

SimFactory = Callable[..., Awaitable[SimServer]]


def pytest_report_header(config: pytest.Config) -> str:
    engine = engine_of(None)
    what = {
        "kafka": "Apache Kafka 4.4 (KRaft, from Maven Central)",
        "tansu": "Tansu",
        "external": f"your cluster at {os.environ.get('KAFKA_BOOTSTRAP_SERVERS')}",
    }[engine]
    return f"broker: {engine}: {what} (PIPELINE_TEST_BROKER=tansu|kafka|external)"


#: Why Apache Kafka cannot run here (no Java, no Maven, Maven Central out of
#: reach), when the suite was asked to run on it outside CI.
_NO_KAFKA: list[str] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fetch Apache Kafka's jars and the schema registry once, before parallel
    workers start them. In CI what cannot be had fails the run; elsewhere its
    tests skip, saying why."""
    from pipeline.dev.apicurio import distribution
    from pipeline.errors import ConfigError

    if not hasattr(session.config, "workerinput"):
        try:
            distribution()
        except ConfigError as exc:
            if os.environ.get("CI"):
                pytest.exit(f"the schema registry tests need Apicurio, but {exc}", returncode=1)
    if engine_of(None) != "kafka":
        return
    from pipeline.dev.kafkabroker import classpath
    from pipeline.dev.maven import java

    try:
        java()
        if not hasattr(session.config, "workerinput"):
            classpath()
    except ConfigError as exc:
        if os.environ.get("CI"):
            pytest.exit(f"PIPELINE_TEST_BROKER=kafka in CI, but {exc}", returncode=1)
        _NO_KAFKA.append(str(exc))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _NO_KAFKA:
        skip = pytest.mark.skip(reason=f"PIPELINE_TEST_BROKER=kafka, but {_NO_KAFKA[0]}")
        for item in items:
            if "integration" in item.keywords:
                item.add_marker(skip)


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
