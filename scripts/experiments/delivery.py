"""At least once with done markers, or transactions: what a kill -9 costs each,
on Apache Kafka with the production profile.

    .venv/bin/python scripts/experiments/delivery.py [RUNS]

Per run and mode (PIPELINE_TRANSACTIONS=off|on): one worker serves a partner's
400 requests (the simulator answers in 150 ms, 64 in flight); after 100
responses it is killed with SIGKILL and a second worker takes over. Counted
through a read_committed reader (the harness's collector, as partners read):
requests lost, requests answered twice, usage records per request, and what
the partner paid for: the simulator's 200s per request. And the takeover: kill
to the heir's first response, and until the partner has read every response
(a transaction the dead worker left open holds back read_committed readers of
the partitions it wrote until the broker aborts it). Prints one JSON line per run, then the medians.
"""

from __future__ import annotations

import json
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.dev.harness import Stack

REQUESTS = 400


def run(mode: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(
            Path(tmp),
            ["--latency-ms", "150"],
            {"PIPELINE_TRANSACTIONS": mode, "PIPELINE_MAX_IN_FLIGHT": "64"},
            engine="kafka",
        )
        try:
            return measure(stack, mode)
        finally:
            stack.close()


def measure(stack: Stack, mode: str) -> dict[str, Any]:
    stack.add_partner("paid")
    first = stack.start_worker("first")
    keys = [stack.send("paid", f"request {i}", max_tokens=16) for i in range(REQUESTS)]
    stack.client("paid").flush()
    stack.outcomes(["paid"], lambda o: sum(1 for k in keys if k in o.responses) >= 100, 120)
    killed = time.time()
    first.signal(signal.SIGKILL)
    first.popen.wait(10)
    stack.start_worker("heir")
    got = stack.outcomes(["paid"], lambda o: o.complete(keys), timeout=180)
    answered = time.time() - killed
    served = [
        datetime.fromisoformat(str(e["ts"])).timestamp()
        for e in stack.worker_log("heir")
        if e.get("msg") == "served"
    ]
    calls = stack.sim_stats()["totals"]["requests"].get("200", 0)
    return {
        "mode": mode,
        "lost": sum(1 for k in keys if not got.responses.get(k)),
        "answered_twice": sum(1 for k in keys if len(got.responses.get(k, [])) > 1),
        "usage_per_request": round(sum(len(got.usage[k]) for k in keys) / len(keys), 4),
        "calls_per_request": round(calls / len(keys), 4),
        "takeover_s": round(min(served) - killed, 2) if served else None,
        "all_answered_s": round(answered, 2),
    }


def main(runs: int) -> None:
    results: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for _ in range(runs):
        for mode in results:
            result = run(mode)
            results[mode].append(result)
            print(json.dumps(result), flush=True)
    for mode, rows in results.items():
        medians = {
            k: statistics.median(r[k] for r in rows if r[k] is not None)
            for k in rows[0]
            if k != "mode"
        }
        print(json.dumps({"mode": mode, "runs": len(rows), "median": medians}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
