"""Worker join, leave and kill -9 takeover times, on either broker, with each
broker's own profile (Apache Kafka: production timings, 10 s sessions).

    .venv/bin/python scripts/experiments/takeover.py kafka
    .venv/bin/python scripts/experiments/takeover.py tansu

A partner sends 40 requests a second throughout. Measured from the event to the
surviving worker's "partitions assigned" (the group has settled) and until every
request sent in the second after the event is answered (requests flow again,
on every partition):
- join: a first worker from spawn to ready (/metrics says claude_worker_ready 1);
- scale out: a second worker joins (from its spawn);
- leave: the second worker is stopped with SIGTERM (it drains, then leaves);
- kill: a worker is killed with SIGKILL (the group waits out its session).
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from pipeline.dev.harness import Stack


def main(engine: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), ["--latency-ms", "20"], engine=engine)
        try:
            run(stack)
        finally:
            stack.close()


def assigned_after(stack: Stack, name: str, t0: float, timeout: float = 60) -> float:
    def ts(e: dict[str, object]) -> float:
        from datetime import datetime

        return datetime.fromisoformat(str(e["ts"])).timestamp()

    found = stack.wait_log(
        lambda e: e.get("msg") == "partitions assigned" and ts(e) >= t0, name, timeout
    )
    return ts(found[0]) - t0


def run(stack: Stack) -> None:
    stack.add_partner("steady")
    sent: list[tuple[float, tuple[str, str]]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            sent.append((time.time(), stack.send("steady", "tick", max_tokens=8)))
            time.sleep(0.025)

    def flowing_after(t0: float) -> float:
        """Seconds from t0 until every request sent in the second after it was
        answered: the slowest partition's resumption."""
        while time.time() < t0 + 1.2:
            time.sleep(0.05)
        window = [k for t, k in list(sent) if t0 <= t < t0 + 1.0]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            got = stack.collector.read(lambda o: [o.seen_at.get(k) for k in window])
            if window and all(s is not None for s in got):
                offset = time.time() - time.monotonic()  # monotonic -> wall
                return max(s for s in got if s is not None) + offset - t0
            time.sleep(0.05)
        return float("nan")

    out: dict[str, float] = {}
    t0 = time.time()
    stack.start_worker("a")
    out["join_ready_s"] = time.time() - t0
    threading.Thread(target=load, daemon=True).start()
    time.sleep(3)
    t0 = time.time()
    b = stack.start_worker("b", wait=False)
    out["scaleout_settled_s"] = assigned_after(stack, "b", t0)
    out["scaleout_flowing_s"] = flowing_after(t0)
    time.sleep(3)
    t0 = time.time()
    b.signal(signal.SIGTERM)
    out["leave_settled_s"] = assigned_after(stack, "a", t0)
    out["leave_flowing_s"] = flowing_after(t0)
    stack.start_worker("c")
    time.sleep(3)
    t0 = time.time()
    stack.workers["a"][0].signal(signal.SIGKILL)
    out["kill_settled_s"] = assigned_after(stack, "c", t0)
    out["kill_flowing_s"] = flowing_after(t0)
    stop.set()
    print(json.dumps({"engine": stack.engine, **{k: round(v, 2) for k, v in out.items()}}))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "kafka")
