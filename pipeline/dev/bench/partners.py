"""`claude-pipeline bench partners --count N`: one active partner among N.

Per-partner topics are the design, so the partner count is the scale that
matters most: a thousand partners are four thousand request partitions on one
worker. Two phases side by side in one run, each on a fresh broker with one
worker: `BASELINE` partners, then N. In each, one partner sends requests one
after another (each waits for its response) while every other partner is
registered, provisioned and idle; then the worker idles with no traffic at all
while its CPU is measured.

A request's latency is the pipeline's `latency_ms`: from the partner stamping
it (`created_at_ms`) to its response being written, so the partner's producer,
the broker, the worker's fetch and the worker itself, and not how often the
partner's own reader fetches (on Tansu every fetch waits its whole max-wait).
The targets (issue 27): with N partners a round trip's p50 at most 1.5x
the baseline's, and an idle worker under 5% of a core.

Beside the worker, on the same broker with the same partitions and the broker
profile's fetch wait, two bare consumers assigned every request partition see
a record produced to one of them: librdkafka's (confluent-kafka) and aiokafka's
(the worker's client under Faust). Their latencies say how much of the
worker's is its Kafka client's.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator

from pipeline.dev.bench.bare import bare_consumers
from pipeline.dev.bench.result import Progress, Result, Say, pct
from pipeline.dev.bench.rig import NO_LIMITS, Rig, cpu_seconds
from pipeline.kafka.admin import add_partners
from pipeline.partners import Partner

BASELINE = 10
ACTIVE = "active"
#: How long an idle worker's CPU is measured (a measurement window, not a wait).
IDLE_S = 10.0
WARM_UP = 3


def scenario(quick: bool, say: Say, progress: Progress, count: int | None = None) -> Result:
    count = count or (100 if quick else 1_000)
    requests = 20 if quick else 50
    idle_s = 3.0 if quick else IDLE_S
    result = Result(
        "partners",
        {"partners": count, "baseline_partners": BASELINE, "requests": requests, "idle_s": idle_s},
        targets={"p50_ratio": "<= 1.5", f"idle_cpu_share_{count}": "<= 0.05"},
    )
    for n in (BASELINE, count):
        say(f"{n} partners ({n - 1} idle): {requests} requests one after another")
        got = _phase(n, requests, idle_s, say, progress)
        result.metrics.update({f"{name}_{n}": value for name, value in got.items()})
    base, many = result.metrics[f"p50_ms_{BASELINE}"], result.metrics[f"p50_ms_{count}"]
    result.metrics["p50_ratio"] = round(many / base, 3) if base else 0.0
    return result


#: Apache Kafka's heap per partner beyond the default's (measured: 256 MB ran out
#: of memory creating a thousand partners' topics).
HEAP_MB_PER_PARTNER = 1


def _phase(n: int, requests: int, idle_s: float, say: Say, progress: Progress) -> dict[str, float]:
    heap_mb = 256 + HEAP_MB_PER_PARTNER * n
    with Rig() as rig, _env("PIPELINE_KAFKA_HEAP", f"{heap_mb}m"):
        # Claude answers at once: the round trip is the pipeline's and the broker's own.
        rig.start([*NO_LIMITS, "--latency-ms", "0", "--ms-per-output-token", "0"])
        started = time.monotonic()
        idle_ids = [f"idle{i:05d}" for i in range(n - 1)]
        _add_idle(rig, idle_ids)
        rig.add_partners({ACTIVE: 1})
        provisioned_s = time.monotonic() - started
        worker = rig.start_worker()
        for _ in range(WARM_UP):  # the SDK client, the first fetches: not what is measured
            _round_trip(rig)
        trips = []
        for i in range(requests):
            trips.append(_round_trip(rig))
            progress(i + 1, requests)
        say(f"idle for {idle_s:.0f} s, measuring the worker's CPU")
        before = cpu_seconds(worker.pid)
        time.sleep(idle_s)  # the measurement window
        idle = (cpu_seconds(worker.pid) - before) / idle_s
        worker.stop()
        say("bare consumers of every request partition: librdkafka, then aiokafka")
        bare = bare_consumers(rig, [*idle_ids, ACTIVE], requests)
    trips.sort()
    return {
        "p50_ms": round(statistics.median(trips), 1),
        "p95_ms": round(pct(trips, 0.95), 1),
        "idle_cpu_share": round(idle, 4),
        "provision_s": round(provisioned_s, 1),
        **bare,
    }


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """`name` set to `value` for the processes started inside (the broker)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _round_trip(rig: Rig) -> float:
    ids = rig.send(ACTIVE, 1)
    if not rig.collector.wait(ids, timeout=60):
        raise RuntimeError(f"no response to {ids[0]} within 60 s")
    (outcome,) = rig.collector.get(ids)
    return float(outcome.latency_ms)


def _add_idle(rig: Rig, ids: list[str]) -> None:
    """Register and provision partners that never send, in one batch (one at a
    time, a thousand take minutes); the collector does not follow them."""
    stack = rig.stack
    ref = stack.secret_file("idle.signing", "an idle partner never signs anything")
    add_partners(stack.settings, stack.codec, [Partner(pid, ref) for pid in ids])
