"""Redis and Celery workers for the seed baseline, as child processes.

Redis comes from Debian's `redis-server` package; when it is missing and we
may install packages (root with apt-get), it is installed.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline.dev.bench.rig import BENCH_KEY, MAX_TOKENS, MODEL
from pipeline.dev.devbroker import free_port
from pipeline.dev.procs import Proc, running
from pipeline.errors import PipelineError
from pipeline.ops.dlq import percentile


def cores() -> int:
    return len(os.sched_getaffinity(0))


def redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(  # noqa: S603 (fixed arguments)
            [apt, "install", "-y", "--no-install-recommends", "redis-server"],
            check=False,
            capture_output=True,
            env=env,
        )
        found = shutil.which("redis-server")
        if found:
            return found
    raise PipelineError("redis-server is missing: install Debian's redis-server package")


def _wait_port(port: int, timeout: float, proc: Proc) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise PipelineError(f"{proc.name} exited early; see {proc.log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise PipelineError(f"{proc.name} not listening after {timeout:.0f} s")


class Celery:
    """A Redis server, and Celery workers started on demand, for one benchmark."""

    def __init__(self, workdir: Path, sim_url: str) -> None:
        self.workdir = workdir
        self._stack = ExitStack()
        port = free_port()
        self.url = f"redis://127.0.0.1:{port}/0"
        redis = self._stack.enter_context(
            running(
                "redis",
                [redis_server(), "--port", str(port), "--save", "", "--appendonly", "no"],
                workdir / "redis.log",
                dict(os.environ),
            )
        )
        _wait_port(port, 15, redis)
        self.env = {
            **os.environ,
            "BENCH_REDIS_URL": self.url,
            "ANTHROPIC_BASE_URL": sim_url,
            "ANTHROPIC_API_KEY": BENCH_KEY,
            "BENCH_MODEL": MODEL,
            "BENCH_MAX_TOKENS": str(MAX_TOKENS),
        }
        os.environ["BENCH_REDIS_URL"] = self.url
        module = "pipeline.dev.bench.baselines.celery_seed"
        self.tasks: ModuleType = importlib.reload(importlib.import_module(module))
        self._runs = 0

    def __enter__(self) -> Celery:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _worker(self, pool: str, concurrency: int) -> ExitStack:
        """Start a worker (stopped when the returned stack closes), queue emptied first."""
        self.tasks.app.control.purge()
        self._runs += 1
        stack = ExitStack()
        name = f"celery-{pool}-{self._runs}"
        proc = stack.enter_context(
            running(
                name,
                [
                    sys.executable,
                    *("-m", "celery", "-A", "pipeline.dev.bench.baselines.celery_seed", "worker"),
                    *("--pool", pool, "--concurrency", str(concurrency), "--loglevel", "WARNING"),
                    *("--without-gossip", "--without-mingle", "--without-heartbeat"),
                ],
                self.workdir / f"{name}.log",
                self.env,
            )
        )
        deadline = time.monotonic() + 60
        while not self.tasks.app.control.ping(timeout=0.5):
            if not proc.alive() or time.monotonic() > deadline:
                stack.close()
                raise PipelineError(f"celery worker did not start; see {proc.log_path}")
        return stack

    def _submit(self, partner: str, i: int) -> tuple[Any, float]:
        messages = [{"role": "user", "content": f"{partner} {i}: say hello"}]
        return self.tasks.process_partner_message.delay(partner, messages), time.time()

    def throughput(
        self, pool: str, concurrency: int, window: float, backlog: int, progress: Any
    ) -> float:
        """Completions per second within `window` seconds of submitting `backlog` tasks."""
        with self._worker(pool, concurrency):
            start = time.time()
            results = [self._submit(f"p{i % 3 + 1}", i)[0] for i in range(backlog)]
            deadline = time.monotonic() + window
            while time.monotonic() < deadline:
                time.sleep(0.5)
                progress(int((time.time() - start) * 10), int(window * 10))
            done = 0
            for r in results:
                if r.ready() and r.successful() and r.result["done_at"] <= start + window:
                    done += 1
            self.tasks.app.control.purge()
            return done / window

    def victim_ratio(self, light_n: int, light_s: float, progress: Any) -> float:
        """A light partner's p99 under a 10x flood over its p99 alone (tuned pool)."""
        with self._worker("threads", 256):
            alone = self._latencies(self._paced("b", light_n, light_s), 60, progress)
            for i in range(10 * light_n):
                self._submit("flood", i)
            flood = self._latencies(self._paced("b", light_n, light_s), 300, progress)
            self.tasks.app.control.purge()
        p_alone = percentile(alone, 99) or 1.0
        p_flood = percentile(flood, 99) or 0.0
        return float(p_flood) / float(p_alone)

    def _paced(self, partner: str, n: int, seconds: float) -> list[tuple[Any, float]]:
        sent = []
        start = time.monotonic()
        for i in range(n):
            delay = start + i * seconds / n - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent.append(self._submit(partner, i))
        return sent

    @staticmethod
    def _latencies(sent: list[tuple[Any, float]], timeout: float, progress: Any) -> list[float]:
        """Milliseconds from submit to done; a task not done by `timeout` counts as that."""
        deadline = time.monotonic() + timeout
        latencies = []
        for n, (result, submitted) in enumerate(sent):
            progress(n, len(sent))
            try:
                value = result.get(timeout=max(0.1, deadline - time.monotonic()))
                latencies.append((value["done_at"] - submitted) * 1000)
            except Exception:  # timed out or failed: as slow as we waited
                latencies.append(timeout * 1000)
        return latencies
