"""Series a gauge stops measuring: dropped in one process, read as 0 under
`worker --processes` (prometheus-client cannot drop them from its shared files)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

from pipeline.ops.gauges import retire


def test_one_process_drops_a_retired_series(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    registry = CollectorRegistry()
    gauge = Gauge("g_used", "x", ["partner"], registry=registry)
    gauge.labels("gone").set(0.7)
    gauge.labels("kept").set(0.2)

    retire(gauge, [("gone",)])

    text = generate_latest(registry).decode()
    assert 'partner="gone"' not in text
    assert 'g_used{partner="kept"} 0.2' in text


def test_many_processes_read_a_retired_series_as_zero(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    # What prometheus-client picks at import when the variable is set (a worker's case)
    monkeypatch.setattr(values, "ValueClass", values.get_value_class())  # type: ignore[no-untyped-call]
    gauge = Gauge("g_used", "x", ["partner"], registry=None, multiprocess_mode="livemax")
    gauge.labels("gone").set(0.7)
    gauge.labels("kept").set(0.2)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not implemented in multi-process mode"
        retire(gauge, [("gone",)])

    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(tmp_path))  # type: ignore[no-untyped-call]
    text = generate_latest(registry).decode()
    assert 'g_used{partner="gone"} 0.0' in text
    assert 'g_used{partner="kept"} 0.2' in text
