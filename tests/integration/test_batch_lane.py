"""The batch lane: `priority: batch` requests answered on the normal topics through
Message Batches at half price, what each kind of batch result leads to, and (on
Apache Kafka) a worker killed at every step of a batch's life losing nothing,
answering nothing twice and submitting nothing twice."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.client import request_record
from pipeline.dev.engines import engine_of
from pipeline.dev.harness import CLI
from pipeline.dev.procs import wait_until
from pipeline.limits.pricing import PriceTable
from tests.integration.stack import Key, Stack, killing_new_workers

pytestmark = pytest.mark.integration

#: Batches close a second after their first request and are polled every 0.2 s;
#: the simulator ends a batch a second after it is created.
LANE_ENV = {"PIPELINE_BATCH_MAX_WAIT_S": "1", "PIPELINE_BATCH_POLL_S": "0.2"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("batch-lane"),
        sim_args=["--batch-delay-s", "1", "--latency-ms", "2"],
        worker_env=LANE_ENV,
    )
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def workers(stack: Stack) -> Iterator[Stack]:
    """The stack, with every worker a test starts killed after it."""
    yield from killing_new_workers(stack)


def _partner(stack: Stack, name: str, **kw: Any) -> str:
    """A partner with an API key of its own: the simulator's counts for it are its own."""
    stack.add_partner(name, api_key_ref=stack.secret_file(f"{name}.key", f"sk-{name}"), **kw)
    return name


def _send(
    stack: Stack,
    pid: str,
    n: int,
    prefix: str,
    *,
    priority: str = "batch",
    deadline_ms: int | None = None,
    model: str = "claude-haiku-4-5",
) -> list[Key]:
    keys = []
    for i in range(n):
        body = {
            "model": model,
            "max_tokens": 32,
            "messages": [{"role": "user", "content": f"{prefix} {i}: say something"}],
        }
        rid = f"{prefix}-{i}"
        record = request_record(
            body, partner_id=pid, request_id=rid, priority=priority, deadline_ms=deadline_ms
        )
        stack.client(pid).send(record)
        keys.append((pid, rid))
    stack.client(pid).flush()
    return keys


def _worker(stack: Stack) -> None:
    """A worker, if the tests before left none running."""
    if not stack.workers:
        stack.start_worker(f"worker-{len(stack.procs)}")


def _batches_list(stack: Stack) -> list[dict[str, Any]]:
    listed = subprocess.run(
        [*CLI, "batches", "list", "--format", "json"],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


IDLE = (b"claude_batch_open 0.0", b"claude_batch_waiting_requests 0.0")


def _kill_workers(stack: Stack) -> None:
    """Kill every running worker once its batch lane is idle: a batch whose answers
    were published but whose entry was not yet removed would be taken up by the
    next worker, and a failpoint meant for its own batches would fire on it."""

    def idle(name: str) -> bool:
        text = stack.metrics_text(name)
        return all(m in text for m in IDLE)

    for name in list(stack.workers):
        proc = stack.workers[name][0]
        if proc.popen.poll() is None:
            wait_until(functools.partial(idle, name), 30, f"{name}'s batch lane idle")
        stack.workers.pop(name)[0].signal(signal.SIGKILL)


def _key_stats(stack: Stack, pid: str) -> dict[str, Any]:
    return dict(stack.sim_stats()["keys"].get(f"sk-{pid}", {}))


def test_batch_requests_are_answered_on_the_normal_topics_at_half_price(stack: Stack) -> None:
    pid = _partner(stack, "halfprice")
    _worker(stack)
    batch = _send(stack, pid, 6, "deferred")
    interactive = _send(stack, pid, 2, "now", priority="interactive")
    keys = batch + interactive
    got = stack.outcomes([pid], lambda o: o.complete(keys), timeout=60)
    assert [got.responses[k][0]["status"] for k in keys] == ["ok"] * 8
    assert all(len(got.responses[k]) == 1 for k in keys), "a request answered twice"
    stats = _key_stats(stack, pid)
    # the six went in batches, once each; only the two interactive ones were calls
    assert (stats["batch_requests"], stats["batch_resubmitted"]) == (6, 0), stats
    assert stats["requests"].get("200") == 2, stats
    prices = PriceTable()
    for key in keys:
        usage = got.usage[key][0]
        full = prices.cost(usage["model"], usage["input_tokens"], usage["output_tokens"])
        expected = full / 2 if key in batch else full
        assert usage["cost_usd"] == pytest.approx(expected, abs=1e-12), (key, usage)
    assert {got.usage[k][0]["service_tier"] for k in batch} == {"batch"}
    # what the usage topic says was spent is what the upstream billed
    recorded = sum(got.usage[k][0]["cost_usd"] for k in keys)
    assert recorded == pytest.approx(stats["cost_usd"], abs=1e-9)


def test_a_deadline_before_a_batch_could_end_is_served_interactively(stack: Stack) -> None:
    pid = _partner(stack, "hurried")
    _worker(stack)
    soon = int(time.time() * 1000) + 3_600_000  # an hour: a batch may take 24
    keys = _send(stack, pid, 3, "soon", deadline_ms=soon)
    got = stack.outcomes([pid], lambda o: o.complete(keys), timeout=60)
    assert [got.responses[k][0]["status"] for k in keys] == ["ok"] * 3
    stats = _key_stats(stack, pid)
    assert (stats.get("batch_requests", 0), stats["requests"].get("200")) == (0, 3), stats


def test_a_request_claude_refuses_in_a_batch_is_dead_lettered_with_its_error_type(
    stack: Stack,
) -> None:
    # The model does not exist upstream: the batch reports the request errored
    # (not_found_error), which an interactive call would hit too.
    pid = _partner(stack, "refused")
    _worker(stack)
    good = _send(stack, pid, 2, "fine")
    bad = _send(stack, pid, 1, "unknown-model", model="claude-nonexistent-9")
    keys = good + bad
    got = stack.outcomes([pid], lambda o: o.complete(keys), timeout=60)
    assert [got.responses[k][0]["status"] for k in good] == ["ok", "ok"]
    assert got.responses[bad[0]][0]["status"] == "error"
    letter = got.dead[bad[0]][0]
    assert letter["reason"] == "upstream_rejected", letter
    assert letter["error_type"] == "not_found_error", letter
    stats = _key_stats(stack, pid)
    assert (stats["batch_requests"], stats["requests"].get("404")) == (3, None), stats


def test_batches_list_and_the_metrics_show_requests_waiting_for_a_batch(workers: Stack) -> None:
    # A batch that closes only after ten minutes: the requests wait, handed over.
    stack = workers
    pid = _partner(stack, "patient")
    _kill_workers(stack)
    env = {"PIPELINE_BATCH_MAX_WAIT_S": "600", "PIPELINE_BACKLOG_INTERVAL_S": "0.5"}
    stack.start_worker("patient-worker", env)
    later = _send(stack, pid, 3, "later")
    now = _send(stack, pid, 2, "now", priority="interactive")
    wait_until(
        lambda: b"claude_batch_waiting_requests 3.0" in stack.metrics_text(),
        20,
        "three requests waiting for a batch",
    )
    # the interactive ones on the same partitions are answered, and every record
    # is committed (the partner's backlog is empty) while the batch stays open
    got = stack.outcomes([pid], lambda o: o.complete(now), timeout=30)
    assert [got.responses[k][0]["status"] for k in now] == ["ok", "ok"]
    backlog_empty = f'claude_partner_backlog_records{{partner="{pid}"}} 0.0'.encode()
    wait_until(lambda: backlog_empty in stack.metrics_text(), 20, "the records committed")
    assert b"claude_batch_waiting_requests 3.0" in stack.metrics_text()
    rows = _batches_list(stack)
    mine = [r for r in rows if r["topic"] == f"claude.requests.{pid}"]
    assert sum(r["requests"] for r in mine) == 3, rows
    key_ref = stack.secret_file(f"{pid}.key", f"sk-{pid}")
    assert {(r["status"], r["key"]) for r in mine} == {("waiting", key_ref)}, mine
    assert _key_stats(stack, pid).get("batch_requests", 0) == 0
    # the worker goes; the next one finds the three in the state log and batches them
    stack.workers.pop("patient-worker")[0].signal(signal.SIGKILL)
    stack.start_worker("patient-heir")
    got = stack.outcomes([pid], lambda o: o.complete(later), timeout=60)
    assert [got.responses[k][0]["status"] for k in later] == ["ok"] * 3
    assert _key_stats(stack, pid)["batch_requests"] == 3


#: Where the worker dies (the how-manieth pass), and what its heir must log.
POINTS = {
    "batch_before_submit": (1, "never reached the API"),
    "batch_after_submit": (1, "found the batch a crashed worker submitted"),
    "batch_polling": (2, "batch lane took up"),
    "batch_after_results": (1, "batch lane took up"),
}


@pytest.mark.skipif(
    engine_of(None) != "kafka",
    reason="needs Apache Kafka for transactions: PIPELINE_TEST_BROKER=kafka (CI runs it)",
)
@pytest.mark.parametrize("point", list(POINTS))
def test_a_kill_at_each_step_of_a_batch_loses_nothing_and_repeats_nothing(
    workers: Stack, point: str
) -> None:
    # The worker dies like kill -9 at `point` of its first batch; its heir finds
    # the handed-over requests and the batch in the state log. Every request is
    # answered once, and no request reaches the Batches API twice.
    stack = workers
    pid = _partner(stack, point.replace("_", "-"))
    _kill_workers(stack)  # this test's worker must own the partitions
    doomed = stack.start_worker(
        f"doomed-{point}",
        {"PIPELINE_FAILPOINTS": f"{point}={POINTS[point][0]}", "PIPELINE_COMMIT_INTERVAL_S": "60"},
    )
    keys = _send(stack, pid, 5, point)
    doomed.popen.wait(60)
    assert doomed.popen.returncode == 137, doomed.log_text()[-2000:]
    if point == "batch_polling":  # what ops see meanwhile: the batches (one a partition)
        rows = [r for r in _batches_list(stack) if r["topic"] == f"claude.requests.{pid}"]
        assert sum(r["requests"] for r in rows) == 5, rows
        submitted = [r for r in rows if r["status"].startswith("submitted/")]
        assert submitted, rows
        assert all(sum(r["counts"].values()) == r["requests"] for r in submitted), rows
    stack.start_worker(f"heir-{point}")
    got = stack.outcomes([pid], lambda o: o.complete(keys), timeout=90)
    stack.wait_log(lambda e: POINTS[point][1] in str(e.get("msg")), f"heir-{point}")
    assert [k for k in keys if not got.responses.get(k)] == [], "a request without a response"
    assert [len(got.responses[k]) for k in keys] == [1] * 5, "a request answered twice"
    assert [got.responses[k][0]["status"] for k in keys] == ["ok"] * 5
    stats = _key_stats(stack, pid)
    assert stats["batch_resubmitted"] == 0, stats
    assert stats["batch_requests"] == 5, stats
    assert stats["requests"].get("200") is None, "served interactively instead"
    _kill_workers(stack)  # nothing of this test's left for the next one's worker
