"""`claude-pipeline broker` as a real process: Kafka clients work against it."""

from __future__ import annotations

import socket
from pathlib import Path

from pipeline.config import Settings
from pipeline.dev.harness import CLI
from pipeline.dev.procs import free_port, running, wait_until
from pipeline.kafka.clients import SyncProducer, core_topics, ensure_topics, read_topics


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_broker_serves_kafka_clients_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    with running("broker", [*CLI, "broker", "--port", str(port)], tmp_path / "broker.log") as proc:
        wait_until(lambda: _accepts(port), 15, "broker")
        settings = Settings(bootstrap_servers=f"127.0.0.1:{port}")
        assert ensure_topics(settings, core_topics(settings)) == [
            "claude.dlq",
            "claude.partners",
            "claude.pipeline.state",
            "claude.usage",
        ]
        assert ensure_topics(settings, core_topics(settings)) == []  # idempotent
        producer = SyncProducer(settings)
        producer.produce("claude.usage", b"v1", key=b"k", headers=[("h", b"x")])
        producer.flush()
        del producer
        got = [(m.key(), m.value(), m.headers()) for m in read_topics(settings, ["claude.usage"])]
        assert got == [(b"k", b"v1", [("h", b"x")])]
        assert proc.stop() == 0
    assert "broker listening on 127.0.0.1:" in proc.log_text()


def test_bad_storage_is_a_usage_error() -> None:
    import subprocess

    out = subprocess.run([*CLI, "broker", "--storage", "s3://x"], capture_output=True, text=True)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1
