"""The benchmark rig: broker, simulator and workers as separate processes on
free ports, partners registered, load produced, outcomes collected.

Everything a scenario starts is stopped when the rig closes, even on error.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from pipeline.admin import add_partner
from pipeline.client import PartnerClient, build_request
from pipeline.config import Settings
from pipeline.devbroker import DevBroker, free_port
from pipeline.partners import DLQ_TOPIC, Partner, responses_topic
from pipeline.procs import Child, child, wait_http
from pipeline.schemas import Codec

BENCH_KEY = "sk-bench-not-a-real-key"
MODEL = "claude-haiku-4-5"
#: The simulator's deterministic reply is derived from the prompt; this many
#: output tokens keeps responses small and alike.
MAX_TOKENS = 64


@dataclass
class Outcome:
    partner: str
    status: str
    latency_ms: int
    completed_at_ms: int
    seen_mono: float  # when the collector read it


@dataclass
class Collector:
    """Reads every response and dead letter in a background thread."""

    settings: Settings
    codec: Codec
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    dead_reasons: dict[str, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, partners: Iterable[str]) -> None:
        consumer = Consumer(
            {
                **self.settings.kafka_config(),
                "group.id": "bench-collector",
                "enable.auto.commit": "false",
            }
        )
        topics = [responses_topic(p) for p in partners] + [DLQ_TOPIC]
        meta = consumer.list_topics(timeout=10)
        consumer.assign(
            [
                TopicPartition(t, p, OFFSET_BEGINNING)
                for t in topics
                if t in meta.topics
                for p in meta.topics[t].partitions
            ]
        )
        self._thread = threading.Thread(target=self._run, args=(consumer,), daemon=True)
        self._thread.start()

    def _run(self, consumer: Consumer) -> None:
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(num_messages=5000, timeout=0.2):
                    value = msg.value()
                    if msg.error() is not None or value is None:
                        continue
                    now = time.monotonic()
                    if msg.topic() == DLQ_TOPIC:
                        d = self.codec.decode("DeadLetter", value)
                        with self._lock:
                            self.dead_reasons[str(d["request_id"])] = str(d["reason"])
                        continue
                    r = self.codec.decode("ClaudeResponse", value)
                    with self._lock:
                        self.outcomes.setdefault(
                            str(r["request_id"]),
                            Outcome(
                                str(r["partner_id"]),
                                str(r["status"]),
                                int(r["latency_ms"]),
                                int(r["completed_at_ms"]),
                                now,
                            ),
                        )
        finally:
            consumer.close()

    def count(self, ids: Iterable[str] | None = None) -> int:
        with self._lock:
            if ids is None:
                return len(self.outcomes)
            return sum(1 for i in ids if i in self.outcomes)

    def wait(
        self,
        ids: Sequence[str],
        timeout: float,
        progress: Callable[[int, int], None] | None = None,
    ) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.count(ids)
            if progress is not None:
                progress(done, len(ids))
            if done >= len(ids):
                return True
            time.sleep(0.2)
        return False

    def get(self, ids: Iterable[str]) -> list[Outcome]:
        with self._lock:
            return [self.outcomes[i] for i in ids if i in self.outcomes]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


class Rig:
    """One benchmark run's processes. Use as a context manager."""

    def __init__(self, workdir: Path | None = None, keep: bool = False) -> None:
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="claude-pipeline-bench-"))
        self.keep = keep
        self._stack = ExitStack()
        self.codec = Codec()
        self.env: dict[str, str] = {}
        self.settings: Settings | None = None
        self.sim_url = ""
        self.workers: dict[str, tuple[Child, int]] = {}
        self._secrets: dict[str, bytes] = {}
        self._clients: dict[str, PartnerClient] = {}
        self.collector: Collector | None = None

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.collector is not None:
            self.collector.close()
        self._clients.clear()
        self._stack.close()
        if self._own_dir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- processes -------------------------------------------------------------

    def start(self, sim_args: Sequence[str], worker_env: dict[str, str] | None = None) -> None:
        """Broker and simulator up; `worker_env` becomes every worker's environment."""
        broker = self._stack.enter_context(DevBroker(log_file=self.workdir / "broker.log"))
        port = free_port()
        self.sim_url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "PIPELINE_PARTNERS_FILE": str(self.workdir / "partners.toml"),
            "PIPELINE_PROFILE": "dev",
            "PIPELINE_LOG_LEVEL": "WARNING",
            "ANTHROPIC_BASE_URL": self.sim_url,
            "ANTHROPIC_API_KEY": BENCH_KEY,
            **(worker_env or {}),
        }
        self.env = env
        sim = self._stack.enter_context(
            child(
                "sim",
                [
                    sys.executable,
                    *("-m", "pipeline", "sim", "--port", str(port), "--keys", BENCH_KEY),
                    *("--log-level", "WARNING", *sim_args),
                ],
                env,
                self.workdir,
            )
        )
        wait_http(f"{self.sim_url}/_sim/health", 20, sim)
        self.settings = Settings.from_env(env)

    def add_partners(self, weights: dict[str, int], **limits: Any) -> None:
        assert self.settings is not None  # noqa: S101 (start() first)
        for pid, weight in weights.items():
            secret = secrets.token_hex(16)
            name = f"BENCH_SECRET_{pid.upper()}"
            self.env[name] = secret
            os.environ[name] = secret
            self._secrets[pid] = secret.encode()
            add_partner(
                self.settings,
                self.codec,
                Partner(
                    partner_id=pid,
                    signing_secret_ref=f"env:{name}",
                    weight=weight,
                    **limits,
                ),
            )
        self.collector = Collector(self.settings, self.codec)
        self.collector.start(weights)

    def start_worker(self, name: str = "worker", env: dict[str, str] | None = None) -> Child:
        port = free_port()
        proc = self._stack.enter_context(
            child(
                name,
                [sys.executable, "-m", "pipeline", "worker"],
                {**self.env, "PIPELINE_METRICS_PORT": str(port), **(env or {})},
                self.workdir,
            )
        )
        self.workers[name] = (proc, port)
        wait_http(f"http://127.0.0.1:{port}/metrics", 60, proc, b"claude_worker_ready 1.0")
        return proc

    # -- load ------------------------------------------------------------------

    def client(self, pid: str) -> PartnerClient:
        assert self.settings is not None  # noqa: S101
        if pid not in self._clients:
            self._clients[pid] = PartnerClient(self.settings, pid, self._secrets[pid], self.codec)
        return self._clients[pid]

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
        self, pid: str, rate_per_s: float, seconds: float, out: list[str], tag: str = ""
    ) -> threading.Thread:
        """Send at a steady rate in a background thread, appending ids to `out`."""

        def run() -> None:
            client = PartnerClient(self.settings, pid, self._secrets[pid], self.codec)  # type: ignore[arg-type]
            start = time.monotonic()
            n = int(rate_per_s * seconds)
            for i in range(n):
                due = start + i / rate_per_s
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
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
        with urllib.request.urlopen(f"{self.sim_url}/_sim/stats", timeout=5) as r:  # noqa: S310
            data: dict[str, Any] = json.loads(r.read())
        return data

    def sim_requests(self) -> dict[str, int]:
        """Requests that reached the simulator, by HTTP status."""
        totals: dict[str, int] = self.sim_stats()["totals"]["requests"]
        return totals

    def sim_reset(self) -> None:
        req = urllib.request.Request(f"{self.sim_url}/_sim/reset", method="POST")  # noqa: S310
        with urllib.request.urlopen(req, timeout=5):  # noqa: S310 (loopback)
            pass

    def pid_of(self, name: str = "worker") -> int:
        return int(self.workers[name][0].proc.pid)


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
