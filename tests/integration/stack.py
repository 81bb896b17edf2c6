"""A real pipeline for integration tests: Tansu, the simulator, worker processes.

Nothing is mocked: records go through a real Kafka-protocol broker, requests
through real HTTP to the simulator, and workers are real `claude-pipeline
worker` processes. Every process is stopped when the stack closes.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from pipeline.admin import add_partner, update_partner
from pipeline.client import PartnerClient, build_request
from pipeline.config import Settings
from pipeline.devbroker import DevBroker
from pipeline.partners import DLQ_TOPIC, USAGE_TOPIC, Partner, responses_topic
from pipeline.schemas import Codec
from pipeline.security import open_payload
from tests.procs import CLI, Proc, free_port, http_ok, wait_until

DEFAULT_KEY = "sk-test-default-key"
MODEL = "claude-haiku-4-5"

Key = tuple[str, str]  # (partner_id, request_id)


@dataclass
class Outcomes:
    responses: dict[Key, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    usage: dict[Key, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    dead: dict[Key, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    dead_without_id: list[dict[str, Any]] = field(default_factory=list)

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


class Stack:
    def __init__(
        self, tmp: Path, sim_args: Iterable[str] = (), worker_env: dict[str, str] | None = None
    ):
        self.tmp = tmp
        self.codec = Codec()
        self.procs: list[Proc] = []
        self.broker = DevBroker(log_file=tmp / "broker.log")
        self.broker.start()
        self.sim_port = free_port()
        self.sim = self._spawn(
            "sim",
            [*CLI, "sim", "--port", str(self.sim_port), "--log-level", "WARNING", *sim_args],
            {},
        )
        wait_until(lambda: http_ok(f"{self.sim_url}/_sim/health"), 20, "simulator")
        self.env: dict[str, str] = {
            "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap,
            "PIPELINE_PARTNERS_FILE": str(tmp / "partners.toml"),
            "PIPELINE_PROFILE": "dev",
            "ANTHROPIC_BASE_URL": self.sim_url,
            "ANTHROPIC_API_KEY": DEFAULT_KEY,
            "PIPELINE_MAX_ATTEMPTS": "3",
            "PIPELINE_BACKOFF_BASE_S": "0.05",
            "PIPELINE_BACKOFF_CAP_S": "0.2",
            "PIPELINE_UPSTREAM_TIMEOUT_S": "5",
            "PIPELINE_SHUTDOWN_GRACE_S": "2",
            **(worker_env or {}),
        }
        self.settings = Settings.from_env(self.env)
        self.secrets: dict[str, bytes] = {}
        self.workers: dict[str, tuple[Proc, int]] = {}
        self._clients: dict[str, PartnerClient] = {}
        self._reader: Consumer | None = None
        self._assigned: set[str] = set()
        self._seen = Outcomes()

    @property
    def sim_url(self) -> str:
        return f"http://127.0.0.1:{self.sim_port}"

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(args, self.tmp / f"{name}.log", env)
        self.procs.append(proc)
        return proc

    # -- partners ------------------------------------------------------------------

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
        return partner

    def update_partner(self, partner_id: str, **changes: Any) -> None:
        update_partner(self.settings, self.codec, partner_id, **changes)

    def opened(self, dead: dict[str, Any]) -> bytes:
        """A dead letter's payload, unsealed with its partner's secret."""
        aad = f"{dead['source_topic']}|{dead['source_partition']}|{dead['source_offset']}".encode()
        return open_payload(list(self.secrets.values()), bytes(dead["payload"]), aad)

    def client(self, partner_id: str) -> PartnerClient:
        if partner_id not in self._clients:
            self._clients[partner_id] = PartnerClient(
                self.settings, partner_id, self.secrets[partner_id], self.codec
            )
        return self._clients[partner_id]

    def send(self, partner_id: str, prompt: str, **kw: Any) -> Key:
        kw.setdefault("model", MODEL)
        kw.setdefault("max_tokens", 64)
        request = build_request(partner_id, prompt, **kw)
        client = self.client(partner_id)
        client.send(request)
        client.flush()
        return (partner_id, request["request_id"])

    # -- workers -------------------------------------------------------------------

    def start_worker(
        self, name: str = "worker", env: dict[str, str] | None = None, *, wait: bool = True
    ) -> Proc:
        port = free_port()
        proc = self._spawn(
            name, [*CLI, "worker"], {**self.env, "PIPELINE_METRICS_PORT": str(port), **(env or {})}
        )
        self.workers[name] = (proc, port)
        if not wait:
            return proc
        wait_until(
            lambda: b"claude_worker_ready 1.0" in self.metrics_text(name) or not proc.alive(),
            45,
            f"{name} to consume",
        )
        assert proc.alive(), proc.log_text()[-3000:]
        return proc

    def metrics_text(self, name: str = "worker") -> bytes:
        _, port = self.workers[name]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                return bytes(r.read())
        except OSError:
            return b""

    def worker_log(self, name: str = "worker") -> list[dict[str, Any]]:
        proc, _ = self.workers[name]
        lines = []
        for line in proc.log_text().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    # -- outcomes ------------------------------------------------------------------

    def outcomes(
        self,
        partners: Iterable[str],
        until: Callable[[Outcomes], bool],
        timeout: float = 60.0,
    ) -> Outcomes:
        """Read responses, usage and dead letters until `until` holds (or time runs out).

        One consumer follows the topics for the whole stack, so each call reads
        only what is new.
        """
        deadline = time.monotonic() + timeout
        self._follow([responses_topic(p) for p in partners] + [DLQ_TOPIC, USAGE_TOPIC])
        while True:
            self._drain()
            if until(self._seen) or time.monotonic() > deadline:
                return self._seen

    def _follow(self, topics: list[str]) -> None:
        new = [t for t in topics if t not in self._assigned]
        if not new:
            return
        if self._reader is None:
            self._reader = Consumer(
                {
                    **self.settings.kafka_config(),
                    "group.id": "stack-reader",
                    "enable.auto.commit": "false",
                }
            )
        meta = self._reader.list_topics(timeout=10)
        tps = [
            TopicPartition(t, p, OFFSET_BEGINNING)
            for t in new
            if t in meta.topics
            for p in meta.topics[t].partitions
        ]
        self._reader.incremental_assign(tps)
        self._assigned.update(t for t in new if t in meta.topics)

    def _drain(self) -> None:
        assert self._reader is not None
        got = self._seen
        for msg in self._reader.consume(num_messages=5000, timeout=0.3):
            value = msg.value()
            if msg.error() is not None or value is None:
                continue
            topic = msg.topic()
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
                got.responses[(r["partner_id"], r["request_id"])].append(r)

    def sim_stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.sim_url}/_sim/stats", timeout=5) as r:  # noqa: S310
            result: dict[str, Any] = json.loads(r.read())
            return result

    def sim_exchanges(self) -> list[dict[str, Any]]:
        """What reached the simulator and what it answered (needs `--record N`)."""
        with urllib.request.urlopen(f"{self.sim_url}/_sim/exchanges", timeout=10) as r:  # noqa: S310
            result: list[dict[str, Any]] = json.loads(r.read())
            return result

    def close(self) -> None:
        for client in self._clients.values():
            client.flush(5)
        self._clients.clear()  # drop producer connections before the broker goes
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        for proc in reversed(self.procs):
            proc.stop()
        self.broker.stop()
