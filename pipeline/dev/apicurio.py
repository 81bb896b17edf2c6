"""A real schema registry on this machine: Apicurio Registry, from Maven Central.

`deploy/apicurio/pom.xml` names its Quarkus distribution (one tar.gz): fetched
once with Maven and unpacked into the cache (see pipeline/dev/maven.py), then run
with `java -jar` on 127.0.0.1 with in-memory storage, so every start is empty.
Its Confluent-compatible API (`/apis/ccompat/v7`, what `SCHEMA_REGISTRY_URL`
points at) is what confluent-kafka's `SchemaRegistryClient` speaks: register,
fetch by id, compatibility rules and 409 for an incompatible schema.
"""

from __future__ import annotations

import json
import logging
import signal
import tarfile
import time
import urllib.request
from pathlib import Path

from pipeline.dev.maven import DEPLOY, fetched, java
from pipeline.dev.procs import ServerProcess, free_port
from pipeline.errors import BrokerError

log = logging.getLogger("pipeline.dev.apicurio")

POM = DEPLOY / "apicurio" / "pom.xml"
#: The heap it runs with: measured enough for the tests and the demo.
HEAP = "256m"
API = "/apis/ccompat/v7"
WHAT = "the schema registry (Apicurio)"


def _unpack(lib: Path) -> None:
    for archive in lib.glob("*.tar.gz"):
        with tarfile.open(archive) as tar:
            tar.extractall(lib, filter="data")
        archive.unlink()


def distribution(log_file: Path | None = None) -> Path:
    """The directory holding Apicurio's runner jar, fetched on first use."""
    return fetched(POM, "apicurio", WHAT, _unpack, log_file)


class SchemaRegistryServer(ServerProcess):
    """Apicurio Registry on 127.0.0.1, stopped with the object and nothing else."""

    def __init__(self, port: int | None = None, *, workdir: Path) -> None:
        super().__init__()
        self.port = port or free_port()
        self.workdir = workdir
        self.log_file = workdir / "apicurio.log"

    @property
    def url(self) -> str:
        """What `SCHEMA_REGISTRY_URL` is set to."""
        return f"http://127.0.0.1:{self.port}{API}"

    def start(self, timeout: float = 60.0) -> None:
        java_bin = java(WHAT)
        home = distribution(self.workdir / "maven.log")
        (runner,) = home.glob("*-runner.jar")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._spawn(
            [java_bin, f"-Xmx{HEAP}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
             f"-Dquarkus.http.port={self.port}", "-Dquarkus.http.host=127.0.0.1",
             "-jar", str(runner)],
            self.log_file,
            cwd=self.workdir,
        )  # fmt: skip
        took = self._await_ready(self._wait_ready, timeout)
        log.info("schema registry ready", extra={"url": self.url, "s": round(took, 2)})

    def _wait_ready(self, deadline: float) -> None:
        while True:
            if (code := self.exited()) is not None:
                raise BrokerError(
                    f"the schema registry exited with status {code} at start (see {self.log_file})"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/subjects", timeout=1) as r:  # noqa: S310
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BrokerError(f"the schema registry was not ready on {self.url} in time")
            time.sleep(0.1)

    def subjects(self) -> list[str]:
        """Every subject registered so far."""
        with urllib.request.urlopen(f"{self.url}/subjects", timeout=5) as r:  # noqa: S310
            return [str(subject) for subject in json.load(r)]

    def stop(self, timeout: float = 10.0) -> None:
        self._end(signal.SIGTERM, timeout)
