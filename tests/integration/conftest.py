from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from pipeline.sim import SimConfig, SimServer

SimFactory = Callable[..., Awaitable[SimServer]]


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
