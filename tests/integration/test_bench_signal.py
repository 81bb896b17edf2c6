"""`claude-pipeline bench` stopped with SIGTERM stops every process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.dev.harness import CLI

pytestmark = pytest.mark.integration


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone while listed
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_benchmark_stopped_with_sigterm_stops_the_processes_it_started(tmp_path: Path) -> None:
    bench = subprocess.Popen(
        [*CLI, "bench", "latency", "--quick", "--results", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    started: list[int] = []
    try:
        deadline = time.monotonic() + 60
        # until the worker has started its own helper (the simulator's starts
        # before it listens, and the worker after the simulator): all under way
        while not any(" worker" in _cmdline(p) and _descendants(p) for p in started):
            assert time.monotonic() < deadline, "the benchmark's worker never started"
            assert bench.poll() is None, "the benchmark ended before its worker started"
            time.sleep(0.1)  # polling the process tree
            started = _descendants(bench.pid)
        names = [_cmdline(p) for p in started]
        assert len(started) >= 3, names  # the broker, the simulator, the worker (and helpers)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(30) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.1)  # polling for the last exits
        assert [_cmdline(p) for p in started if _alive(p)] == []
    finally:
        for pid in [bench.pid, *started]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        bench.wait()
