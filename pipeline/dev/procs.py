"""Child processes for the demo, the benchmarks and the integration tests: started
in their own process group with their output in a log file, waited on by events
(a port answering, a line in the log, a metric), always stopped."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from pipeline.errors import PipelineError

#: How often a wait looks at what it waits for.
POLL_S = 0.05


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Return once `predicate()` holds; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL_S)


def http_body(url: str) -> bytes | None:
    """The body at `url`, or None if nothing answers there (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (loopback URLs)
            return bytes(resp.read())
    except OSError:
        return None


def http_ok(url: str) -> bool:
    return http_body(url) is not None


_ROUTINE = re.compile(r'"level": "(debug|info)"')


class Proc:
    """A child process whose output goes to a log file we can read and show."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.popen = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,  # its own process group: we can stop its children too
        )

    @property
    def pid(self) -> int:
        return int(self.popen.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def trouble(self, limit: int = 40) -> str:
        """The log's warnings, errors and anything not a JSON line (a traceback):
        what an assertion about this process shows when it fails."""
        lines = [
            line
            for line in self.log_text().splitlines()
            if not line.startswith("{") or not _ROUTINE.search(line)
        ]
        return "\n".join(lines[-limit:]) or f"(nothing but info lines in {self.log_path})"

    def wait_http(self, url: str, timeout: float, needle: bytes = b"") -> None:
        """Wait until `url` answers (with `needle` in its body); fail early if we exit."""

        def ready() -> bool:
            if not self.alive():
                raise PipelineError(f"{self.name} exited early; see {self.log_path}")
            body = http_body(url)
            return body is not None and needle in body

        try:
            wait_until(ready, timeout, f"{self.name} at {url}")
        except TimeoutError:
            raise PipelineError(
                f"{self.name} not ready after {timeout:.0f} s; see {self.log_path}"
            ) from None

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL the whole group if it does not exit in time."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(5)
        self.signal(signal.SIGKILL)  # stragglers in the group
        self._log.close()
        return int(self.popen.returncode)


def end_group(proc: subprocess.Popen[bytes] | None, first: signal.Signals, timeout: float) -> None:
    """Send a child's process group `first`, then SIGKILL if it has not exited
    within `timeout` (the brokers' stop)."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, first)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


class ServerProcess(ABC):
    """A server this process starts and owns (a broker, the schema registry):
    spawned in its own process group with its output in a log (or nowhere),
    stopped with its whole group, and nothing else. Subclasses define `start`
    (spawn, then wait until it serves) and `stop` (through `_end`)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (for measuring its CPU)."""
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def exited(self) -> int | None:
        """The exit status if it has stopped (or was never started: -1), else None."""
        if self._proc is None:
            return -1
        return self._proc.poll()

    def _spawn(self, args: Sequence[str], log_file: Path | None, cwd: Path | None = None) -> None:
        self._log = log_file.open("ab") if log_file is not None else None
        self._proc = subprocess.Popen(  # noqa: S603 (our servers, our arguments)
            list(args),
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )

    def _await_ready(self, wait: Callable[[float], None], timeout: float) -> float:
        """`wait(deadline)` until it serves; stopped if that fails. The seconds it took."""
        started = time.monotonic()
        try:
            wait(started + timeout)
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - started

    def _end(self, first: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        end_group(proc, first, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    @abstractmethod
    def start(self) -> None:
        """Spawn the server and return once it is ready (or raise, stopped)."""

    @abstractmethod
    def stop(self) -> None:
        """End the server and everything it started."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_all(procs: Sequence[Proc], timeout: float = 10.0) -> None:
    """Stop every process at once (SIGTERM to all, then wait): a stack stops in the
    time of its slowest process, not the sum of all."""
    for proc in procs:
        if proc.alive():
            proc.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(max(0.0, deadline - time.monotonic()))
        proc.stop(0.1)


@contextlib.contextmanager
def running(
    name: str, args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> Iterator[Proc]:
    proc = Proc(name, args, log_path, env)
    try:
        yield proc
    finally:
        proc.stop()
