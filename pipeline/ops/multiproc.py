"""`claude-pipeline worker --processes N`: the cores of one host.

N ordinary worker processes join the same consumer group (Kafka shares the
partitions among them exactly as among hosts) under a small supervisor that
owns the host's one HTTP port: `/metrics` aggregates every process's metrics
(prometheus-client's multiprocess mode: each process writes its values to
memory-mapped files in a directory the supervisor reads), `/healthz` says every
process is alive, `/readyz` that every one is consuming.

SIGTERM or SIGINT reaches every process, each drains as a lone worker would,
and the supervisor exits once all have. A process that dies on its own stops
the others and the supervisor exits non-zero: the orchestrator restarts the
whole unit, as it would a single worker (a half-running unit would hide it).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from types import FrameType

from prometheus_client import CollectorRegistry, Metric, multiprocess

from pipeline.config import Settings
from pipeline.ops.health import Health, HttpEndpoint

log = logging.getLogger("pipeline.ops.multiproc")

#: Set in each child: its index (logs say which process wrote them).
PROCESS_ENV = "PIPELINE_WORKER_PROCESS"


class _Collector(multiprocess.MultiProcessCollector):
    """prometheus-client's collector, minus files a process is still creating.

    A process opens a metric's file, then sizes it: read in between, the file is
    empty and prometheus-client fails on it (`struct.error`). That failed the
    supervisor's readiness check, and with it the unit, when a process first used
    a metric at a scrape's moment. A file is never empty again once sized, so
    skipping empty ones is free of races; their values are in the next scrape.
    """

    def collect(self) -> Iterable[Metric]:
        files = [f for f in glob.glob(os.path.join(self._path, "*.db")) if _sized(f)]
        return self.merge(files, accumulate=True)  # type: ignore[no-any-return,no-untyped-call]


def _sized(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except FileNotFoundError:  # gone since listed: a dead process's, just removed
        return False


class _Registry(CollectorRegistry):
    """Every process's metrics, read from their files at each scrape."""

    def __init__(self, directory: str) -> None:
        super().__init__(auto_describe=False)
        _Collector(self, path=directory)  # type: ignore[no-untyped-call]


def ready_processes(registry: CollectorRegistry) -> set[str]:
    """The pids whose `claude_worker_ready` is 1 (a gauge in `liveall` mode: one
    sample per live process)."""
    ready = set()
    for family in registry.collect():
        if family.name == "claude_worker_ready":
            for sample in family.samples:
                if sample.value == 1.0:
                    ready.add(sample.labels.get("pid", ""))
    return ready


class Supervisor:
    def __init__(self, settings: Settings, processes: int, argv: Sequence[str]) -> None:
        self.settings = settings
        self.n = processes
        self.argv = list(argv)
        self.children: list[subprocess.Popen[bytes]] = []
        self.stopping = False
        self.directory = tempfile.mkdtemp(prefix="claude-pipeline-metrics-")
        self.registry = _Registry(self.directory)
        self.health = Health()

    def _env(self, index: int) -> dict[str, str]:
        return {
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": self.directory,
            "PIPELINE_METRICS_PORT": "-1",  # the supervisor serves the host's port
            PROCESS_ENV: str(index),
        }

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if not self.stopping:
            log.info("stopping every worker process", extra={"signal": signum})
        self.stopping = True
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)

    def _readiness(self) -> None:
        alive = [c for c in self.children if c.poll() is None]
        ready = ready_processes(self.registry)
        if self.stopping:
            self.health.set_not_ready("stopping")
        elif len(alive) == self.n and {str(c.pid) for c in alive} <= ready:
            self.health.set_ready()
        else:
            self.health.set_not_ready(f"{len(ready)} of {self.n} worker processes ready")

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        endpoint = HttpEndpoint(self.registry, self.health)
        code = 0
        try:
            if self.settings.metrics_port >= 0:
                port = endpoint.serve(self.settings.metrics_port)
                log.info("metrics listening", extra={"port": port, "processes": self.n})
            for i in range(self.n):
                child = subprocess.Popen(  # noqa: S603 (ourselves)
                    [sys.executable, "-m", "pipeline", "worker", *self.argv], env=self._env(i)
                )
                self.children.append(child)
                log.info("worker process started", extra={"index": i, "pid": child.pid})
            code = self._watch()
        finally:
            self._reap()
            endpoint.close()
            shutil.rmtree(self.directory, ignore_errors=True)
        return code

    def _watch(self) -> int:
        while True:
            self.health.beat()
            self._readiness()
            exited = [c for c in self.children if c.poll() is not None]
            if self.stopping and len(exited) == len(self.children):
                failed = [c.returncode for c in exited if c.returncode not in (0, -signal.SIGTERM)]
                for child in exited:
                    level = logging.ERROR if child.returncode in failed else logging.INFO
                    log.log(
                        level,
                        "worker process stopped",
                        extra={"pid": child.pid, "code": child.returncode},
                    )
                return failed[0] if failed else 0
            if exited and not self.stopping:
                died = exited[0]
                log.error(
                    "a worker process exited: stopping the others",
                    extra={"pid": died.pid, "code": died.returncode},
                )
                self._stop(signal.SIGTERM, None)
                self._wait(self.settings.shutdown_grace_s + 15)
                return died.returncode or 1
            time.sleep(0.2)

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(max(0.0, deadline - time.monotonic()))

    def _reap(self) -> None:
        """Nothing outlives the supervisor: a child still running is killed."""
        self._wait(self.settings.shutdown_grace_s + 15)
        for child in self.children:
            if child.poll() is None:
                log.warning("worker process did not stop: killed", extra={"pid": child.pid})
                child.kill()
                child.wait()
            multiprocess.mark_process_dead(child.pid, self.directory)  # type: ignore[no-untyped-call]


def run_processes(settings: Settings, processes: int, argv: Iterable[str]) -> int:
    from pipeline.ops.logs import Redactor, setup_logging

    setup_logging(settings.log_level, Redactor(settings.secret_values()))
    return Supervisor(settings, processes, list(argv)).run()
