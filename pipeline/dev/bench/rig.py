"""The benchmark rig: the shared stack (`pipeline.dev.harness`) as benchmarks use it,
with the pipeline's own defaults, partners registered, load produced and paced,
and outcomes read back by request id.

Everything a scenario starts is stopped when the rig closes, even on error.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.client import PartnerClient, build_request
from pipeline.dev.harness import Collector, Outcomes, Stack
from pipeline.dev.procs import Proc

BENCH_KEY = "sk-bench-not-a-real-key"
MODEL = "claude-haiku-4-5"
#: The simulator's deterministic reply is derived from the prompt; this many
#: output tokens keeps responses small and alike.
MAX_TOKENS = 64
#: The worker as it runs by default (the shared stack tunes retries down for tests).
DEFAULTS = {
    "PIPELINE_LOG_LEVEL": "WARNING",
    "PIPELINE_MAX_ATTEMPTS": "5",
    "PIPELINE_BACKOFF_BASE_S": "0.5",
    "PIPELINE_BACKOFF_CAP_S": "30",
    "PIPELINE_UPSTREAM_TIMEOUT_S": "600",
    "PIPELINE_SHUTDOWN_GRACE_S": "10",
}


NO_LIMITS = ["--rpm", "0", "--itpm", "0", "--otpm", "0"]
#: 1,200 RPM enforced as a 1-second burst (the way the real API may enforce a
#: per-minute limit), ITPM/OTPM high enough to leave requests the binding one.
LIMITED = ["--rpm", "1200", "--itpm", "200000", "--otpm", "200000", "--burst", "20"]
LIMIT_RPS = 20.0


@dataclass
class Outcome:
    partner: str
    status: str
    latency_ms: int
    completed_at_ms: int
    seen_mono: float  # when the collector read it
    #: Time spent in Claude's (the simulator's) hands, from the usage record (0: none read).
    upstream_ms: int = 0

    @property
    def added_ms(self) -> int:
        """What the pipeline added: all of the latency but the upstream call."""
        return self.latency_ms - self.upstream_ms


class Responses:
    """Outcomes by request id, from the shared collector."""

    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    @staticmethod
    def _first(seen: Outcomes) -> dict[str, tuple[Any, float]]:
        return {key[1]: (records[0], seen.seen_at[key]) for key, records in seen.responses.items()}

    def count(self, ids: Iterable[str] | None = None) -> int:
        first = self._collector.read(self._first)
        return len(first) if ids is None else sum(1 for i in ids if i in first)

    def wait(
        self,
        ids: Sequence[str],
        timeout: float,
        progress: Callable[[int, int], None] | None = None,
    ) -> bool:
        wanted = set(ids)
        deadline = time.monotonic() + timeout
        while True:
            self._collector.wait(
                lambda o: wanted <= {k[1] for k in o.responses},
                min(1.0, max(0.0, deadline - time.monotonic())),
            )
            # Counted under the collector's lock: its thread keeps adding records
            # (counting outside it failed with "dictionary changed size").
            done = self._collector.read(lambda o: sum(1 for k in o.responses if k[1] in wanted))
            if progress is not None:
                progress(done, len(wanted))
            if done >= len(wanted):
                return True
            if time.monotonic() >= deadline:
                return False

    def get(self, ids: Iterable[str]) -> list[Outcome]:
        first, usage = self._collector.read(
            lambda seen: (
                self._first(seen),
                {key[1]: records[0] for key, records in seen.usage.items() if records},
            )
        )
        out = []
        for i in ids:
            if i in first:
                r, seen_at = first[i]
                out.append(
                    Outcome(
                        str(r["partner_id"]),
                        str(r["status"]),
                        int(r["latency_ms"]),
                        int(r["completed_at_ms"]),
                        seen_at,
                        int(usage[i]["upstream_ms"]) if i in usage else 0,
                    )
                )
        return out


class Rig:
    """One benchmark run's processes. Use as a context manager."""

    def __init__(self, workdir: Path | None = None, keep: bool = False) -> None:
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="claude-pipeline-bench-"))
        self.keep = keep
        self._stack: Stack | None = None

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stack(self) -> Stack:
        assert self._stack is not None  # noqa: S101 (start() first)
        return self._stack

    @property
    def sim_url(self) -> str:
        return self.stack.sim_url

    @property
    def collector(self) -> Responses:
        return Responses(self.stack.collector)

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
        if self._own_dir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- processes -------------------------------------------------------------

    def start(self, sim_args: Sequence[str], worker_env: dict[str, str] | None = None) -> None:
        """Broker and simulator up; `worker_env` becomes every worker's environment."""
        self._stack = Stack(
            self.workdir,
            ["--keys", BENCH_KEY, *sim_args],
            {**DEFAULTS, **(worker_env or {})},
            BENCH_KEY,
        )

    def add_partners(self, weights: dict[str, int], **limits: Any) -> None:
        for pid, weight in weights.items():
            self.stack.add_partner(pid, weight=weight, **limits)

    def start_worker(self, name: str = "worker", env: dict[str, str] | None = None) -> Proc:
        return self.stack.start_worker(name, env)

    # -- load ------------------------------------------------------------------

    def client(self, pid: str) -> PartnerClient:
        return self.stack.client(pid)

    def send(self, pid: str, n: int, flush: bool = True, tag: str = "") -> list[str]:
        client = self.client(pid)
        ids = []
        for i in range(n):
            request = build_request(
                pid, f"{pid}{tag} {i}: say hello", model=MODEL, max_tokens=MAX_TOKENS
            )
            ids.append(client.send(request))
        if flush:
            client.flush()
        return ids

    def paced(
        self,
        pid: str,
        rate_per_s: float,
        seconds: float,
        out: list[str],
        tag: str = "",
        linger_ms: float | None = None,
        warm_up: bool = False,
    ) -> threading.Thread:
        """Send at a steady rate in a background thread, appending ids to `out`.

        `warm_up`: one request goes first, uncounted, and is answered before the
        clock starts: an idempotent producer's first record waits about 0.5 s on
        Apache Kafka for its producer id (`PartnerClient`), and a worker's first
        call to an upstream key learns the key's limits from Claude's answer
        while the requests behind it wait (the first 40 of a 200 req/s run
        queued 80-220 ms): start-ups, not the pipeline's steady latency. (Not
        for the fairness victims: it would spend their newcomer's turn before
        they are measured.)"""
        stack = self.stack

        def run() -> None:
            client = PartnerClient(
                stack.settings, pid, stack.secrets[pid], stack.codec, linger_ms=linger_ms
            )
            if warm_up:
                warm = build_request(pid, f"{pid}{tag} warm-up", model=MODEL, max_tokens=MAX_TOKENS)
                warm_id = client.send(warm)
                client.flush()
                self.collector.wait([warm_id], 60)
            start = time.monotonic()
            n = int(rate_per_s * seconds)
            for i in range(n):
                due = start + i / rate_per_s
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the load, not waiting for an event
                request = build_request(
                    pid, f"{pid}{tag} paced {i}", model=MODEL, max_tokens=MAX_TOKENS
                )
                out.append(client.send(request))
            client.flush()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    # -- measurements ----------------------------------------------------------

    def sim_stats(self) -> dict[str, Any]:
        return self.stack.sim_stats()

    def sim_requests(self) -> dict[str, int]:
        """Requests that reached the simulator, by HTTP status."""
        totals: dict[str, int] = self.sim_stats()["totals"]["requests"]
        return totals

    def sim_reset(self) -> None:
        self.stack.sim_reset()

    def pid_of(self, name: str = "worker") -> int:
        return self.stack.workers[name][0].pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0
