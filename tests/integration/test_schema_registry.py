"""SCHEMA_REGISTRY_URL: Confluent wire format in and out, through the real client library.

The registry is a small in-process HTTP server speaking the part of the
Confluent Schema Registry REST API that `confluent_kafka.schema_registry` uses.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pipeline.client import PartnerClient, build_request
from pipeline.kafka import read_topics
from pipeline.partners import responses_topic
from pipeline.schemas import Codec, ConfluentRegistry
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
        stack.codec = codec  # outcomes come back Confluent-framed
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
