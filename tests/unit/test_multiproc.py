"""The supervisor of `worker --processes N` reads every process's metric files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import Gauge, values

from pipeline.ops.multiproc import _Registry, ready_processes


def test_a_metric_file_still_being_created_is_skipped_not_fatal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.get_value_class())  # type: ignore[no-untyped-call]
    ready = Gauge("claude_worker_ready", "x", registry=None, multiprocess_mode="liveall")
    ready.set(1)
    # Another process has opened its file and not yet sized it. Before: the
    # supervisor's readiness check died on it (struct.error) and the unit exited 1.
    (tmp_path / "gauge_liveall_999999.db").touch()

    assert ready_processes(_Registry(str(tmp_path))) == {str(os.getpid())}
