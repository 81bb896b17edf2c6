"""SCHEMA_REGISTRY_URL: Confluent wire format in and out, through the real client library.

The registry is a small in-process HTTP server speaking the part of the
Confluent Schema Registry REST API that `confluent_kafka.schema_registry` uses.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pipeline.client import PartnerClient, build_request
from pipeline.harness import CLI
from pipeline.kafka import read_topics
from pipeline.partners import responses_topic
from pipeline.procs import free_port
from pipeline.schemas import Codec, ConfluentRegistry
from pipeline.security import signed_headers
from tests.integration.stack import MODEL, Stack

pytestmark = pytest.mark.integration


class FakeRegistry(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.schemas: dict[int, str] = {}
        self.ids: dict[str, int] = {}
        self.subjects: dict[str, list[int]] = {}
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeRegistry

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        parts = self.path.split("?")[0].strip("/").split("/")
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        if len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
            schema = body["schema"]
            with self.server.lock:
                if schema not in self.server.ids:
                    new_id = len(self.server.schemas) + 1
                    self.server.ids[schema] = new_id
                    self.server.schemas[new_id] = schema
                schema_id = self.server.ids[schema]
                self.server.subjects.setdefault(parts[1], []).append(schema_id)
            self._send(200, {"id": schema_id})
        else:
            self._send(404, {"error_code": 404, "message": "not found"})

    def do_GET(self) -> None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) == 3 and parts[:2] == ["schemas", "ids"]:
            schema = self.server.schemas.get(int(parts[2]))
            if schema is not None:
                self._send(200, {"schema": schema, "schemaType": "AVRO"})
                return
        self._send(404, {"error_code": 40403, "message": "Schema not found"})


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    server = FakeRegistry()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_confluent_framed_requests_in_and_responses_out(
    registry: FakeRegistry, tmp_path_factory: pytest.TempPathFactory
) -> None:
    stack = Stack(
        tmp_path_factory.mktemp("registry"),
        sim_args=["--latency-ms", "5"],
        worker_env={"SCHEMA_REGISTRY_URL": registry.url},
    )
    try:
        stack.add_partner("reg")
        stack.start_worker()
        codec = Codec(registry=ConfluentRegistry(registry.url))
        client = PartnerClient(stack.settings, "reg", stack.secrets["reg"], codec)
        confluent = build_request("reg", "framed by the registry", model=MODEL, max_tokens=32)
        client.send(confluent)
        plain = build_request("reg", "single-object framing", model=MODEL, max_tokens=32)
        plain_client = PartnerClient(stack.settings, "reg", stack.secrets["reg"], Codec())
        plain_client.send(plain)
        plain_client.flush()
        client.flush()
        keys = [("reg", confluent["request_id"]), ("reg", plain["request_id"])]
        stack.outcomes(["reg"], lambda o: all(k in o.responses for k in keys), timeout=60)
        raw = [m.value() or b"" for m in read_topics(stack.settings, [responses_topic("reg")])]
        assert len(raw) == 2
        assert all(v[:1] == b"\x00" for v in raw), "outputs use the Confluent wire format"
        responses = [codec.decode("ClaudeResponse", v) for v in raw]
        decoded = {r["request_id"]: r for r in responses}
        assert decoded[confluent["request_id"]]["content"].startswith("Re: framed by the registry")
        assert decoded[plain["request_id"]]["status"] == "ok"
        assert "claude.requests.reg-value" in registry.subjects
        assert "claude.responses.reg-value" in registry.subjects
        assert "claude.usage-value" in registry.subjects
    finally:
        stack.close()


def test_every_cli_reader_works_with_the_registry_on(
    registry: FakeRegistry, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Before: with SCHEMA_REGISTRY_URL set, the CLI built a codec without the
    # registry: dlq list and usage report showed nothing, responses and send --wait
    # failed, and dlq replay saw no served request (and could re-send one).
    stack = Stack(
        tmp_path_factory.mktemp("registry-cli"),
        sim_args=["--latency-ms", "5"],
        worker_env={"SCHEMA_REGISTRY_URL": registry.url},
    )
    env = {**os.environ, **stack.env}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )

    try:
        stack.add_partner("regcli")
        stack.start_worker()
        codec = Codec(registry=ConfluentRegistry(registry.url))
        client = PartnerClient(stack.settings, "regcli", stack.secrets["regcli"], codec)
        served = build_request("regcli", "served through the registry", max_tokens=16)
        client.send(served)
        forged = codec.encode("ClaudeRequest", build_request("regcli", "forged"), "x")
        client.send_raw(b"forged-1", forged, signed_headers("regcli", b"wrong", forged))
        client.flush()
        keys = [("regcli", served["request_id"])]
        stack.outcomes(
            ["regcli"], lambda o: o.complete(keys) and len(o.dead_without_id) + len(o.dead) >= 1
        )

        sent = cli("send", "--partner", "regcli", "--prompt", "cli through registry", "--wait")
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["content"][0]["text"].startswith("Re: cli through")
        tail = cli("responses", "--partner", "regcli", "--from-beginning", "--no-follow")
        assert tail.returncode == 0, tail.stderr
        ids = {json.loads(line)["request_id"] for line in tail.stdout.splitlines()}
        assert served["request_id"] in ids
        letters = cli("dlq", "list", "--partner", "regcli", "--format", "json")
        assert letters.returncode == 0, letters.stderr
        reasons = [json.loads(line)["reason"] for line in letters.stdout.splitlines()]
        assert reasons == ["auth_failed"]
        report = json.loads(cli("usage", "report", "--format", "json").stdout)
        assert report["regcli"]["ok"] == 2
        replay = cli("dlq", "replay", "--partner", "regcli", "--dry-run")
        assert replay.returncode == 0, replay.stderr
        assert "dry run:" in replay.stdout
    finally:
        stack.close()


COMMANDS_THAT_TALK_TO_KAFKA = (
    ["dlq", "list"],
    ["dlq", "replay", "--dry-run"],
    ["usage", "report"],
    ["topics", "create"],
    ["partners", "sync"],
    ["partners", "list", "--source", "topic"],
    ["partners", "disable", "acme"],
    ["responses", "--partner", "acme", "--no-follow"],
    ["send", "--partner", "acme", "--prompt", "hi"],
    ["worker"],
)


def test_an_unreachable_broker_is_one_clear_line_within_seconds(tmp_path: Path) -> None:
    # Before: hundreds of librdkafka lines, then a traceback, after 15 s.
    closed = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed}",
           "PIPELINE_PARTNERS_FILE": str(tmp_path / "partners.toml"),
           "PIPELINE_REGISTRY_KEY": "env:REGISTRY_KEY", "REGISTRY_KEY": "k" * 32}  # fmt: skip
    started = time.monotonic()
    running = [
        (command, subprocess.Popen(  # all at once: each waits seconds for the broker
            [*CLI, *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ))
        for command in COMMANDS_THAT_TALK_TO_KAFKA
    ]  # fmt: skip
    for command, proc in running:
        _, stderr = proc.communicate(timeout=60)
        lines = stderr.strip().splitlines()
        assert proc.returncode == 1, (command, stderr[-2000:])
        assert len(lines) == 1, (command, stderr[-2000:])
        assert f"cannot reach Kafka at 127.0.0.1:{closed}" in lines[0], command
        assert "KAFKA_BOOTSTRAP_SERVERS" in lines[0], command
    assert time.monotonic() - started < 20  # ten processes on two cores
