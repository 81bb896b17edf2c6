"""A whole pipeline on this machine, for the demo, the benchmarks and the integration
tests: the embedded broker, the simulator and workers as real processes on free
ports, partners registered, and one collector of every outcome.

Nothing is mocked: records go through a real Kafka-protocol broker, requests
through real HTTP to the simulator, and workers are real `claude-pipeline worker`
processes. Waits are on events (a record read, a line logged, a metric), never on
fixed sleeps. Every process is stopped when the stack closes, even on error.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from pipeline.client import PartnerClient, build_request
from pipeline.config import Settings
from pipeline.dev.engines import engine_env, engine_of, sasl_env, start_broker
from pipeline.dev.kafkabroker import Credentials
from pipeline.dev.procs import Proc, free_port, stop_all, wait_until
from pipeline.errors import PipelineError
from pipeline.factory import Parts, client_config
from pipeline.kafka.admin import add_partner, remove_partner, update_partner
from pipeline.partners import DLQ_TOPIC, USAGE_TOPIC, Partner, responses_topic
from pipeline.schemas import Codec
from pipeline.security.sealing import Opened, load_keyring, open_sealed
from pipeline.security.signing import SecretResolver

T = TypeVar("T")
CLI = [sys.executable, "-m", "pipeline"]
MODEL = "claude-haiku-4-5"
DEFAULT_KEY = "sk-test-default-key"

Key = tuple[str, str]  # (partner_id, request_id)


@dataclass
class Outcomes:
    """Every response, usage record and dead letter read so far, by request."""

    responses: dict[Key, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    usage: dict[Key, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    dead: dict[Key, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    dead_without_id: list[dict[str, Any]] = field(default_factory=list)
    #: When the first response of each request was read (monotonic seconds).
    seen_at: dict[Key, float] = field(default_factory=dict)

    def reason(self, key: Key) -> str | None:
        letters = self.dead.get(key, [])
        return str(letters[-1]["reason"]) if letters else None

    def complete(self, keys: Iterable[Key]) -> bool:
        """Every key has its response and usage record, and its dead letter if it failed.

        The three records of an outcome are produced together but may become
        readable one after the other.
        """
        return all(
            k in self.responses
            and k in self.usage
            and (self.responses[k][-1]["status"] == "ok" or k in self.dead)
            for k in keys
        )


class Collector:
    """Follows partners' response topics, the usage topic and the dead letters in a
    thread; `wait` returns as soon as what was read satisfies a predicate."""

    def __init__(self, settings: Settings, codec: Codec) -> None:
        self._settings = settings
        self.codec = codec
        self.seen = Outcomes()
        self._changed = threading.Condition()
        self._wanted: set[str] = {DLQ_TOPIC, USAGE_TOPIC}
        self._assigned: set[str] = set()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self._thread.start()

    def follow(self, partners: Iterable[str]) -> None:
        with self._changed:
            self._wanted.update(responses_topic(p) for p in partners)

    def wait(
        self, until: Callable[[Outcomes], bool], timeout: float, partners: Iterable[str] = ()
    ) -> Outcomes:
        """What was read once `until` holds, or when `timeout` runs out (check it)."""
        self.follow(partners)
        deadline = time.monotonic() + timeout
        with self._changed:
            while not until(self.seen):
                if self._error is not None:
                    raise RuntimeError("the outcome collector failed") from self._error
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, 0.5))
            return self.seen

    def read(self, view: Callable[[Outcomes], T]) -> T:
        """`view` of what was read so far, taken while the reader thread waits (what
        `wait` returns keeps changing while records arrive)."""
        with self._changed:
            return view(self.seen)

    def _run(self) -> None:
        consumer = Consumer(
            {
                **client_config(self._settings),
                "group.id": f"collector-{os.getpid()}-{id(self)}",
                "enable.auto.commit": "false",
                "isolation.level": "read_committed",  # as partners read
            }
        )
        try:
            while not self._stop.is_set():
                self._assign(consumer)
                for msg in consumer.consume(num_messages=5000, timeout=0.1):
                    value = msg.value()
                    if msg.error() is None and value is not None:
                        self._take(str(msg.topic()), value)
        except BaseException as exc:
            self._error = exc
            with self._changed:
                self._changed.notify_all()
            raise
        finally:
            consumer.close()

    def _assign(self, consumer: Consumer) -> None:
        with self._changed:
            new = sorted(self._wanted - self._assigned)
        if not new:
            return
        meta = consumer.list_topics(timeout=10)
        ready = [t for t in new if t in meta.topics]
        consumer.incremental_assign(
            [
                TopicPartition(t, p, OFFSET_BEGINNING)
                for t in ready
                for p in meta.topics[t].partitions
            ]
        )
        self._assigned.update(ready)

    def _take(self, topic: str, value: bytes) -> None:
        got = self.seen
        with self._changed:
            if topic == DLQ_TOPIC:
                d = self.codec.decode("DeadLetter", value)
                if d["request_id"] is None:
                    got.dead_without_id.append(d)
                else:
                    got.dead[(d["partner_id"], d["request_id"])].append(d)
            elif topic == USAGE_TOPIC:
                u = self.codec.decode("UsageRecord", value)
                got.usage[(u["partner_id"], u["request_id"])].append(u)
            else:
                r = self.codec.decode("ClaudeResponse", value)
                key = (r["partner_id"], r["request_id"])
                got.responses[key].append(r)
                got.seen_at.setdefault(key, time.monotonic())
            self._changed.notify_all()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


class SimulatorControls:
    """The simulator's admin API (/_sim/...), as tests and benchmarks drive it."""

    sim_port: int

    @property
    def sim_url(self) -> str:
        return f"http://127.0.0.1:{self.sim_port}"

    def _sim_get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.sim_url}{path}", timeout=10) as r:  # noqa: S310
            return json.loads(r.read())

    def sim_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._sim_get("/_sim/stats")
        return stats

    def sim_exchanges(self) -> list[dict[str, Any]]:
        """What reached the simulator and what it answered (needs `--record N`)."""
        exchanges: list[dict[str, Any]] = self._sim_get("/_sim/exchanges")
        return exchanges

    def sim_faults(self, rates: Mapping[str, float]) -> None:
        """Change the simulator's fault rates now (`{}`: none)."""
        req = urllib.request.Request(  # noqa: S310 (loopback)
            f"{self.sim_url}/_sim/faults",
            data=json.dumps(dict(rates)).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5):  # noqa: S310
            pass

    def sim_reset(self) -> None:
        req = urllib.request.Request(f"{self.sim_url}/_sim/reset", method="POST")  # noqa: S310
        with urllib.request.urlopen(req, timeout=5):  # noqa: S310 (loopback)
            pass


class Stack(SimulatorControls):
    """Broker and simulator up at once; partners, workers and load on demand."""

    def __init__(
        self,
        workdir: Path,
        sim_args: Sequence[str] = (),
        worker_env: Mapping[str, str] | None = None,
        api_key: str = DEFAULT_KEY,
        *,
        simulate: bool = True,
        engine: str | None = None,
        broker_settings: Mapping[str, str] | None = None,
        sasl: Credentials | None = None,
    ) -> None:
        """`simulate=False` calls the real API with `api_key` instead of a simulator.
        `engine`: "tansu" (the embedded broker, dev profile) or "kafka" (Apache Kafka,
        production profile); by default `PIPELINE_TEST_BROKER`, else tansu.
        `broker_settings`: extra server.properties of a Kafka broker; `sasl`: its
        super user, with SCRAM and ACLs enforced (every tool here logs in as it)."""
        self.tmp = workdir
        self.procs: list[Proc] = []
        self.engine = engine_of(engine)
        self.broker = start_broker(self.engine, workdir, broker_settings, sasl)
        self._collector: Collector | None = None
        self.sim_port = free_port()
        if simulate:
            try:
                self.sim = self.spawn(
                    "sim",
                    [
                        *CLI,
                        "sim",
                        "--port",
                        str(self.sim_port),
                        "--log-level",
                        "WARNING",
                        *sim_args,
                    ],
                )
                self.sim.wait_http(f"{self.sim_url}/_sim/health", 20)
            except BaseException:
                self.close()
                raise
        upstream = {"ANTHROPIC_BASE_URL": self.sim_url} if simulate else {}
        self.dlq_keys = f"k1:{secrets.token_urlsafe(24)}\n"
        self.env: dict[str, str] = {
            "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap,
            "PIPELINE_PARTNERS_FILE": str(workdir / "partners.toml"),
            **engine_env(self.engine),
            **(sasl_env(sasl.username, sasl.password) if sasl else {}),
            **upstream,
            "ANTHROPIC_API_KEY": api_key,
            "PIPELINE_MAX_ATTEMPTS": "3",
            "PIPELINE_BACKOFF_BASE_S": "0.05",
            "PIPELINE_BACKOFF_CAP_S": "0.2",
            "PIPELINE_UPSTREAM_TIMEOUT_S": "5",
            "PIPELINE_SHUTDOWN_GRACE_S": "2",
            # The pipeline's own keys, outside the directory partners' secrets come from.
            "PIPELINE_DLQ_KEYS": self._key_file("dlq.keys", self.dlq_keys),
            "PIPELINE_REGISTRY_KEY": self._key_file("registry.key", secrets.token_urlsafe(24)),
            "PIPELINE_PARTNER_SECRETS": f"env:PARTNER_,file:{workdir / 'secrets'}",
            **(worker_env or {}),
        }
        self.settings = Settings.from_env(self.env)
        self.codec: Codec = Parts(self.settings).codec  # with the registry when configured
        self.secrets: dict[str, bytes] = {}
        self._resolver = SecretResolver(self.env)
        self.workers: dict[str, tuple[Proc, int]] = {}
        self._clients: dict[str, PartnerClient] = {}

    def spawn(self, name: str, args: Sequence[str], env: Mapping[str, str] | None = None) -> Proc:
        base = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_BASE_URL"}
        proc = Proc(name, args, self.tmp / f"{name}.log", {**base, **(env or {})})
        self.procs.append(proc)
        return proc

    def stop_sim(self) -> None:
        """Stop the simulator: connections to it are refused until `restart_sim`."""
        self.sim.stop()

    def restart_sim(self) -> None:
        """The simulator again, on the same port, with the same flags (state forgotten)."""
        self.sim = self.spawn("sim-restarted", self.sim.args)
        self.sim.wait_http(f"{self.sim_url}/_sim/health", 20)

    @property
    def collector(self) -> Collector:
        if self._collector is None:
            self._collector = Collector(self.settings, self.codec)
        return self._collector

    # -- partners ------------------------------------------------------------------

    def _key_file(self, name: str, value: str) -> str:
        path = self.tmp / "keys" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(value)
        return f"file:{path}"

    def secret_file(self, name: str, value: str) -> str:
        path = self.tmp / "secrets" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(value)
        return f"file:{path}"

    def add_partner(self, partner_id: str, **kw: Any) -> Partner:
        secret = secrets.token_hex(16)
        self.secrets[partner_id] = secret.encode()
        ref = self.secret_file(f"{partner_id}.signing", secret)
        partner = Partner(partner_id=partner_id, signing_secret_ref=ref, **kw)
        add_partner(self.settings, self.codec, partner)
        self.collector.follow([partner_id])
        return partner

    def update_partner(self, partner_id: str, *, wait: bool = True, **changes: Any) -> None:
        """Change a partner; with `wait`, return once every running worker applied it."""
        self._changing(partner_id, wait, update_partner, **changes)

    def remove_partner(self, partner_id: str, *, wait: bool = True) -> None:
        self._changing(partner_id, wait, remove_partner)

    def _changing(
        self, partner_id: str, wait: bool, change: Callable[..., Any], **changes: Any
    ) -> None:
        def applied(name: str) -> int:
            return sum(
                1
                for e in self.worker_log(name)
                if e.get("msg") == "partner updated" and e.get("partner") == partner_id
            )

        running = [n for n, (proc, _) in self.workers.items() if proc.alive()]
        before = {name: applied(name) for name in running}
        change(self.settings, self.codec, partner_id, **changes)
        if wait:
            for name in running:
                wait_until(
                    lambda name=name: applied(name) > before[name],  # type: ignore[misc]
                    20,
                    f"{name} to apply the change of {partner_id}",
                )

    def opened(self, dead: Mapping[str, Any]) -> Opened:
        """A dead letter's payload, unsealed (with the dead-letter keyring)."""
        aad = f"{dead['source_topic']}|{dead['source_partition']}|{dead['source_offset']}".encode()
        keyring = load_keyring(self.env.get("PIPELINE_DLQ_KEYS"), self._resolver.resolve)
        return open_sealed(
            bytes(dead["payload"]),
            aad,
            keyring=keyring,
            partner_secrets=list(self.secrets.values()),
        )

    def client(self, partner_id: str) -> PartnerClient:
        if partner_id not in self._clients:
            self._clients[partner_id] = PartnerClient(
                self.settings, partner_id, self.secrets[partner_id], self.codec
            )
        return self._clients[partner_id]

    def send(self, partner_id: str, prompt: str, flush: bool = True, **kw: Any) -> Key:
        kw.setdefault("model", MODEL)
        kw.setdefault("max_tokens", 64)
        request = build_request(partner_id, prompt, **kw)
        client = self.client(partner_id)
        client.send(request)
        if flush:
            client.flush()
        return (partner_id, request["request_id"])

    # -- workers -------------------------------------------------------------------

    def start_worker(
        self, name: str = "worker", env: Mapping[str, str] | None = None, *, wait: bool = True
    ) -> Proc:
        port = free_port()
        worker_env = {**self.env, "PIPELINE_METRICS_PORT": str(port), **(env or {})}
        proc = self.spawn(name, [*CLI, "worker"], worker_env)
        self.workers[name] = (proc, port)
        if wait:
            proc.wait_http(f"http://127.0.0.1:{port}/metrics", 45, b"claude_worker_ready 1.0")
        return proc

    def live_worker(self, name: str | None = None) -> str:
        """`name`, or the worker started last: tests that restart workers and
        tests that run after them agree on which one "the worker" is."""
        if name is not None:
            return name
        if not self.workers:
            raise PipelineError("no worker started")
        return list(self.workers)[-1]

    def metrics_text(self, name: str | None = None) -> bytes:
        _, port = self.workers[self.live_worker(name)]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                return bytes(r.read())
        except OSError:
            return b""

    def worker_log(self, name: str | None = None) -> list[dict[str, Any]]:
        proc, _ = self.workers[self.live_worker(name)]
        return [json.loads(line) for line in proc.log_text().splitlines() if line.startswith("{")]

    def wait_log(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        name: str | None = None,
        timeout: float = 20,
        count: int = 1,
    ) -> list[dict[str, Any]]:
        """The lines of a worker's log that satisfy `predicate`, once there are `count`."""
        name = self.live_worker(name)
        found: list[dict[str, Any]] = []

        def logged() -> bool:
            found[:] = [e for e in self.worker_log(name) if predicate(e)]
            return len(found) >= count

        wait_until(logged, timeout, f"{count} line(s) in {name}'s log")
        return found

    # -- outcomes --------------------------------------------------------------------

    def outcomes(
        self, partners: Iterable[str], until: Callable[[Outcomes], bool], timeout: float = 60.0
    ) -> Outcomes:
        """Outcomes read so far, once `until` holds (or `timeout` runs out: check them)."""
        return self.collector.wait(until, timeout, partners)

    def close(self) -> None:
        for client in self._clients.values():
            client.flush(5)
        self._clients.clear()  # drop producer connections before the broker goes
        if self._collector is not None:
            self._collector.close()
            self._collector = None
        self.codec.close()
        # A stack being thrown away needs no graceful stops (tests of those stop
        # their workers themselves): workers are killed, the rest asked to stop.
        workers = [proc for proc, _ in self.workers.values()]
        for proc in workers:
            proc.signal(signal.SIGKILL)
        stop_all(self.procs)
        self.broker.stop()
