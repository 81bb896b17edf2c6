from __future__ import annotations

import pytest

from tests.fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wall() -> FakeClock:
    # 2026-01-01T00:00:00Z: a round wall-clock origin makes reset headers readable
    return FakeClock(1_767_225_600.0)
