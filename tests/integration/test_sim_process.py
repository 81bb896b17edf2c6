"""`claude-pipeline sim` as a real process."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from dataclasses import fields
from pathlib import Path

from pipeline.dev.harness import CLI
from pipeline.dev.procs import free_port, http_ok, running, wait_until
from pipeline.dev.sim import SimConfig

# SimConfig fields and the flag that sets each one
FLAG_FOR = {
    "rpm": "--rpm",
    "itpm": "--itpm",
    "otpm": "--otpm",
    "burst": "--burst",
    "latency_ms": "--latency-ms",
    "jitter_ms": "--jitter-ms",
    "ms_per_output_token": "--ms-per-output-token",
    "fail_rates": "--fail-rate",
    "key_fail_rates": "--fail-rate",
    "seed": "--seed",
    "keys": "--keys",
    "output_tokens": "--output-tokens",
    "timeout_hold_s": "--timeout-hold-s",
    "batch_delay_s": "--batch-delay-s",
    "cache_ttl_s": "--cache-ttl-s",
    "cache_min_tokens": "--cache-min-tokens",
    "cache_ttl_1h_s": "--cache-ttl-1h-s",
    "record_exchanges": "--record",
}


def test_help_documents_every_setting() -> None:
    out = subprocess.run([*CLI, "sim", "--help"], capture_output=True, text=True, check=True)
    configurable = {f.name for f in fields(SimConfig)} - {"max_body_bytes"}
    assert configurable == set(FLAG_FOR)
    for flag in [*FLAG_FOR.values(), "--port", "--host"]:
        assert re.search(rf"\s{re.escape(flag)}\b", out.stdout), flag


def test_bad_flag_is_one_line_and_exit_2() -> None:
    for argv in (["sim", "--fail-rate", "418=0.5"], ["sim", "--rpm", "lots"], ["bogus"]):
        out = subprocess.run([*CLI, *argv], capture_output=True, text=True)
        assert out.returncode == 2, argv
        assert out.stdout == ""
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_fail_rates_over_one_are_refused() -> None:
    out = subprocess.run(
        [*CLI, "sim", "--fail-rate", "500=0.7", "--fail-rate", "529=0.7"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "more than 1" in out.stderr


def test_serves_requests_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    args = [*CLI, "sim", "--port", str(port), "--rpm", "1", "--keys", "k1"]
    with running("sim", args, tmp_path / "sim.log") as proc:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/_sim/health"), 15, "simulator")
        body = json.dumps(
            {
                "model": "claude-haiku-4-5",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
            }
        ).encode()
        statuses = []
        retry_after = []
        for _ in range(2):
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/messages",
                data=body,
                headers={"x-api-key": "k1", "anthropic-version": "2023-06-01"},
            )
            try:
                with urllib.request.urlopen(req) as resp:  # noqa: S310
                    statuses.append(resp.status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
                retry_after.append(exc.headers["retry-after"])
        assert statuses == [200, 429]
        assert retry_after == ["60"]
        assert proc.stop() == 0
    log_lines = [json.loads(line) for line in proc.log_text().splitlines() if line.startswith("{")]
    assert any(line["msg"] == "simulator listening" for line in log_lines)
