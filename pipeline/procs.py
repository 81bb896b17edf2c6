"""Child processes of a command (demo, bench): started on free ports, logged to
files, always stopped."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from pipeline.errors import PipelineError


class Child:
    """A child process of the demo, its output in a log file of the demo's work dir."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.proc = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
            args, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@contextmanager
def child(name: str, args: list[str], env: dict[str, str], workdir: Path) -> Iterator[Child]:
    child = Child(name, args, env, workdir)
    try:
        yield child
    finally:
        child.stop()


def wait_http(url: str, timeout: float, child: Child, needle: bytes = b"") -> None:
    """Poll `url` until it answers (and its body contains `needle`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise PipelineError(f"{child.name} exited early; see {child.log_path}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (loopback URL)
                if needle in resp.read():
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise PipelineError(f"{child.name} not ready after {timeout:.0f} s; see {child.log_path}")
