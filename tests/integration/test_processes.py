"""`worker --processes N`: one unit of N processes in the group, one /metrics
for all of them, a clean stop of all on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator

import pytest

from pipeline.dev.harness import CLI
from pipeline.dev.procs import free_port, http_body, wait_until
from tests.integration.stack import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("processes"), sim_args=["--latency-ms", "20"])
    try:
        yield s
    finally:
        s.close()


def test_two_processes_share_the_work_and_one_endpoint_and_stop_together(stack: Stack) -> None:
    for pid in ("proc-a", "proc-b"):
        stack.add_partner(pid)
    port = free_port()
    unit = stack.spawn(
        "unit",
        [*CLI, "worker", "--processes", "2"],
        {**stack.env, "PIPELINE_METRICS_PORT": str(port)},
    )
    base = f"http://127.0.0.1:{port}"
    unit.wait_http(f"{base}/readyz", 60, b"ready")

    def metrics() -> str:
        return (http_body(f"{base}/metrics") or b"").decode()

    ready = re.findall(r'claude_worker_ready\{pid="(\d+)"\} 1\.0', metrics())
    assert len(set(ready)) == 2, metrics()
    children = [int(p) for p in set(ready)]

    pids = ("proc-a", "proc-b")
    keys = [stack.send(p, f"{p} {i}", flush=False) for i in range(30) for p in pids]
    for p in ("proc-a", "proc-b"):
        stack.client(p).flush()
    got = stack.outcomes(["proc-a", "proc-b"], lambda o: o.complete(keys), timeout=90)
    assert all(len(got.responses[k]) == 1 for k in keys)
    assert {got.responses[k][0]["status"] for k in keys} == {"ok"}

    # The group saw two members (the partitions were shared), and /metrics adds
    # up what both served.
    assert '"msg": "partitions assigned", "workers": 2' in unit.log_text()
    text = metrics()

    def served(partner: str) -> float:
        found = re.search(
            rf'claude_partner_requests_total\{{partner="{partner}",status="ok"\}} ([0-9.e+]+)', text
        )
        return float(found.group(1)) if found else 0.0

    assert served("proc-a") == 30
    assert served("proc-b") == 30

    os.kill(unit.pid, signal.SIGTERM)  # the supervisor only, as an orchestrator would
    wait_until(lambda: not unit.alive(), 30, "the unit to stop")
    assert unit.popen.returncode == 0, unit.trouble()
    for child in children:
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)
