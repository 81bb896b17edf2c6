"""What the experiments share: a fresh embedded broker, a consumer of it, and its
CPU time."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from pipeline.config import Settings
from pipeline.dev.devbroker import DevBroker


@contextlib.contextmanager
def embedded_broker(name: str) -> Iterator[tuple[Settings, int]]:
    """A fresh embedded broker (its log in /tmp/NAME-broker.log): settings to reach
    it, and its process id."""
    broker = DevBroker(log_file=Path(f"/tmp/{name}-broker.log"))  # noqa: S108
    broker.start()
    try:
        if broker.pid is None:
            raise SystemExit("the broker is not running")
        yield (
            Settings(bootstrap_servers=broker.bootstrap, profile="dev", broker="embedded"),
            broker.pid,
        )
    finally:
        broker.stop()


def consumer(settings: Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """A bare aiokafka consumer of `topics` (the client Faust runs), fetching with the
    embedded profile's 10 ms wait; `options` are aiokafka's."""
    return AIOKafkaConsumer(
        *topics, bootstrap_servers=settings.bootstrap_servers, fetch_max_wait_ms=10, **options
    )


def cpu_s(pid: int) -> float:
    """CPU seconds (user and system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
