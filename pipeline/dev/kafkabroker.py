"""A genuine Apache Kafka broker on this machine, from Maven Central.

The broker's jars come from `deploy/kafka/pom.xml` (`kafka_2.13` with every broker
module, the admin tools, and log4j's slf4j 1.7 binding): Maven copies them once
into `PIPELINE_KAFKA_CACHE` (default `~/.cache/claude-pipeline`), and later runs
start from there without touching the network. Each start formats a fresh KRaft
storage directory (faster than reusing one) and runs one combined
broker+controller on 127.0.0.1, stopped with the object and nothing else.

`sasl=True` is the production shape: SCRAM-SHA-512 on the client listener (the
admin's credential created at format time), PLAIN between broker and controller
(KRaft cannot authenticate its own controller with SCRAM: the credentials live
in the metadata it is starting), `StandardAuthorizer` with
`allow.everyone.if.no.acl.found=false`, and the admin a super user.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline.dev.maven import DEPLOY, fetched, java
from pipeline.dev.procs import ServerProcess, free_port
from pipeline.errors import BrokerError

log = logging.getLogger("pipeline.dev.kafkabroker")

POM = DEPLOY / "kafka" / "pom.xml"
#: The heap the broker runs with: measured enough for tests, benchmarks and the
#: demo. Thousands of partitions need more (a thousand partners' ~10,000 ran a
#: 256 MB broker out of memory): PIPELINE_KAFKA_HEAP, e.g. 1g.
HEAP = "256m"


def heap() -> str:
    return os.environ.get("PIPELINE_KAFKA_HEAP") or HEAP


SCRAM = "SCRAM-SHA-512"

_LOG4J = """\
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        Pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
      - name: kafka.server.BrokerServer
        level: INFO
"""


@dataclass(frozen=True)
class Credentials:
    """The super user's SCRAM login (`KAFKA_SASL_USERNAME` / `KAFKA_SASL_PASSWORD`)."""

    username: str
    password: str


def classpath(log_file: Path | None = None) -> Path:
    """The directory of the broker's jars, fetched with Maven on first use."""

    def finish(lib: Path) -> None:
        (lib / "log4j2.yaml").write_text(_LOG4J)

    return fetched(POM, "kafka", "the kafka engine", finish, log_file)


def cluster_id() -> str:
    """A random cluster id as Kafka writes one (never starting with "-", as its
    own Uuid.randomUuid ensures: a tool would read it as an option)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _jaas(module: str, creds: Credentials, *, plain_users: bool = False) -> str:
    users = f' user_{creds.username}="{creds.password}"' if plain_users else ""
    return f'{module} required username="{creds.username}" password="{creds.password}"{users};'


class KafkaBroker(ServerProcess):
    """Apache Kafka in a child process: `with KafkaBroker() as b: b.bootstrap`."""

    engine = "kafka"

    def __init__(
        self,
        port: int = 0,
        *,
        workdir: Path,
        sasl: Credentials | None = None,
        log_file: Path | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.controller_port = free_port()
        self.workdir = workdir
        self.sasl = sasl
        self.log_file = log_file or workdir / "kafka.log"
        #: Extra broker settings (server.properties keys), e.g. compaction timings.
        self.extra = dict(settings or {})
        self._data: Path | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def properties(self, data_dir: Path) -> dict[str, str]:
        client = "SASL_PLAINTEXT" if self.sasl else "PLAINTEXT"
        controller = "SASL_PLAINTEXT" if self.sasl else "PLAINTEXT"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{self.host}:{self.controller_port}",
            "listeners": f"CLIENT://{self.bootstrap},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"CLIENT://{self.bootstrap}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "CLIENT",
            "listener.security.protocol.map": f"CLIENT:{client},CONTROLLER:{controller}",
            "log.dirs": str(data_dir),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.cleaner.backoff.ms": "1000",
            # records up to the pipeline's 32 MiB limit (plus framing)
            "message.max.bytes": str(32 * 1024 * 1024 + 64 * 1024),
            "socket.request.max.bytes": str(128 * 1024 * 1024),
        }
        if self.sasl is not None:
            creds = self.sasl
            props.update(
                {
                    "sasl.enabled.mechanisms": SCRAM,
                    "sasl.mechanism.inter.broker.protocol": SCRAM,
                    "listener.name.client.scram-sha-512.sasl.jaas.config": _jaas(
                        "org.apache.kafka.common.security.scram.ScramLoginModule", creds
                    ),
                    "sasl.mechanism.controller.protocol": "PLAIN",
                    "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
                    "listener.name.controller.plain.sasl.jaas.config": _jaas(
                        "org.apache.kafka.common.security.plain.PlainLoginModule",
                        creds,
                        plain_users=True,
                    ),
                    "authorizer.class.name": (
                        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
                    ),
                    "allow.everyone.if.no.acl.found": "false",
                    "super.users": f"User:{creds.username}",
                }
            )
        props.update(self.extra)
        return props

    def _format(self, java: str, lib: Path, config: Path) -> None:
        args = [java, "-cp", f"{lib}/*", "kafka.tools.StorageTool", "format",
                f"--cluster-id={cluster_id()}", "-c", str(config), "--standalone"]  # fmt: skip
        if self.sasl is not None:
            args += [
                "--add-scram",
                f"{SCRAM}=[name={self.sasl.username},password={self.sasl.password}]",
            ]
        out = subprocess.run(args, capture_output=True, text=True, check=False)  # noqa: S603
        if out.returncode != 0:
            last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise BrokerError(f"formatting Kafka's storage failed: {last[0]}")

    def start(self, timeout: float = 60.0) -> None:
        java_bin = java()
        lib = classpath(self.workdir / "maven.log")
        data = self._data = self.workdir / f"kafka-data-{uuid.uuid4().hex[:8]}"
        data.mkdir(parents=True)
        config = self.workdir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in self.properties(data).items()))
        self._format(java_bin, lib, config)
        self._spawn(
            [java_bin, f"-Xmx{heap()}", f"-Xms{heap()}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
             f"-Dlog4j2.configurationFile={lib / 'log4j2.yaml'}",
             "-cp", f"{lib}/*", "kafka.Kafka", str(config)],
            self.log_file,
        )  # fmt: skip
        took = self._await_ready(self._wait_ready, timeout)
        log.info("kafka broker ready", extra={"bootstrap": self.bootstrap, "s": round(took, 2)})

    def admin_config(self) -> dict[str, str]:
        """confluent-kafka settings of the super user (or none without SASL)."""
        conf = {"bootstrap.servers": self.bootstrap}
        if self.sasl is not None:
            conf.update(
                {
                    "security.protocol": "SASL_PLAINTEXT",
                    "sasl.mechanisms": SCRAM,
                    "sasl.username": self.sasl.username,
                    "sasl.password": self.sasl.password,
                }
            )
        return conf

    def _wait_ready(self, deadline: float) -> None:
        """Until the broker answers metadata with itself in it (its port opens earlier)."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({**self.admin_config(), "log_level": "0"})
        while True:
            if (code := self.exited()) is not None:
                raise BrokerError(
                    f"the Kafka broker exited with status {code} at start (see {self.log_file})"
                )
            with contextlib.suppress(Exception):
                if admin.list_topics(timeout=0.5).brokers:
                    return
            if time.monotonic() > deadline:
                raise BrokerError(f"the Kafka broker was not ready on {self.bootstrap} in time")
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a controlled shutdown), SIGKILL after `timeout`."""
        self._end(signal.SIGTERM, timeout)
        if self._data is not None:
            shutil.rmtree(self._data, ignore_errors=True)
            self._data = None
