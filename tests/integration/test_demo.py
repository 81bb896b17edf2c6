"""The README's main command, exactly as a user runs it."""

from __future__ import annotations

import os
import subprocess

import pytest

from pipeline.dev.harness import CLI

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_end_to_end_and_reports_per_partner() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    out = subprocess.run(
        [*CLI, "demo", "--requests", "30"], capture_output=True, text=True, timeout=180, env=env
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    table = {
        line.split()[0]: line.split()
        for line in lines
        if line.split()[:1] in (["acme"], ["globex"], ["initech"])
    }
    assert set(table) == {"acme", "globex", "initech"}
    assert table["acme"][2] == "30"  # ok column
    assert "auth_failed=1" in out.stdout
    assert "schema_error=1" in out.stdout
    assert "deadline_expired=1" in out.stdout
    assert "every request got exactly one outcome (95 requests" in out.stdout


def test_the_demo_runs_through_a_real_schema_registry() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    out = subprocess.run(
        [*CLI, "demo", "--requests", "10", "--schema-registry"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "every request got exactly one outcome (35 requests" in out.stdout
    (line,) = [
        x for x in out.stdout.splitlines() if x.startswith("registry    ") and "subjects" in x
    ]
    # partners wrote through it and the worker registered what it writes
    subjects = [
        "claude.requests.acme-value",
        "claude.requests.initech-value",
        "claude.responses.globex-value",
        "claude.usage-value",
        "claude.dlq-value",
    ]
    for subject in subjects:
        assert subject in line, line
