"""A partner's RPM holds across the group: two workers each enforce the part of it
their partitions carry, so a partner offering three times its rate gets its rate,
not twice it (before, every worker gave the partner its whole RPM)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from pipeline.dev.harness import Stack

pytestmark = pytest.mark.integration

RPM = 600  # 10 a second; each worker's bucket starts with its half of a minute's worth


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, ["--latency-ms", "5"], {"PIPELINE_MAX_QUEUED_PER_PARTNER": "2000"})
    try:
        yield s
    finally:
        s.close()


def test_two_workers_give_a_partner_its_rpm_not_twice_it(stack: Stack) -> None:
    stack.add_partner("metered", rpm=RPM)
    stack.start_worker("w1")
    stack.start_worker("w2")
    stack.wait_log(lambda e: e.get("msg") == "partitions assigned" and e.get("workers") == 2, "w1")
    # one minute's burst (RPM) plus 30 s at the limit: 3x the rate, offered at once
    keys = [stack.send("metered", f"tick {i}", flush=False, max_tokens=8) for i in range(RPM + 300)]
    stack.client("metered").flush()
    stack.outcomes({"metered"}, lambda o: o.complete(keys), 120)
    served = sorted(
        datetime.fromisoformat(e["ts"]).timestamp()
        for name in ("w1", "w2")
        for e in stack.worker_log(name)
        if e.get("msg") == "served"
    )
    assert len(served) == len(keys)
    start = served[0]
    # after the burst, the two buckets together refill at RPM/60 a second: never
    # more (5% for the window's edges); less when the two workers are slow to
    # dispatch because other test processes load the same two cores (94 and 86
    # of 100 in CI runs), never the twice-the-limit this guards against
    window = [t for t in served if start + 15 <= t < start + 25]
    expected = RPM / 60 * 10
    assert -0.20 * expected <= len(window) - expected <= 0.05 * expected, len(window)
