"""Several benchmark runs make one result: medians, min and max, every run judged."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.dev.bench.result import Result, combine


def _run(ratio: float, p99: float) -> Result:
    return Result(
        "fairness",
        {"seconds": 30},
        {"victim_p99_ratio": ratio, "victim_p99_ms": p99},
        {"victim_p99_ratio": "<= 1.3"},
        ["a note"],
    )


def test_three_runs_give_medians_with_min_and_max_and_judge_every_run() -> None:
    got = combine([_run(1.2, 90.0), _run(1.5, 120.0), _run(1.1, 80.0)])
    assert got.metrics == {"victim_p99_ratio": 1.2, "victim_p99_ms": 90.0}
    assert got.spread == {"victim_p99_ratio": [1.1, 1.5], "victim_p99_ms": [80.0, 120.0]}
    assert got.met  # the median meets the target ...
    assert got.met_every_run is False  # ... one run did not, and the JSON says so
    as_json = got.to_json()
    assert as_json["params"]["runs"] == 3
    assert as_json["min_max"]["victim_p99_ratio"] == [1.1, 1.5]
    assert as_json["notes"] == ["a note"]  # said once, not three times


def test_one_run_is_reported_as_it_is() -> None:
    one = _run(1.2, 90.0)
    assert combine([one]) is one
    assert "min_max" not in one.to_json()


@pytest.mark.parametrize(
    ("args", "flag"),
    [(["latency", "--runs", "0"], "--runs"), (["partners", "--count", "0"], "--count")],
)
def test_counts_must_be_positive_one_line_exit_2(args: list[str], flag: str) -> None:
    got = subprocess.run(
        [sys.executable, "-m", "pipeline", "bench", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert got.returncode == 2
    assert got.stderr.strip().count("\n") == 0
    assert flag in got.stderr


def test_the_partner_count_reaches_the_partners_scenario_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pipeline.dev import bench
    from pipeline.dev.bench import scenarios

    seen: dict[str, dict[str, object]] = {}

    def fake(name: str) -> Callable[..., Result]:
        def scenario(quick: bool, say: object, progress: object, **kw: object) -> Result:
            seen[name] = kw
            return Result(name, {}, {"x": 1.0})

        return scenario

    monkeypatch.setitem(scenarios.SCENARIOS, "partners", fake("partners"))
    monkeypatch.setitem(scenarios.SCENARIOS, "clients", fake("clients"))
    out = io.StringIO()
    assert (
        bench.run(["partners", "clients"], quick=True, results_dir=tmp_path, count=7, out=out) == 0
    )
    assert seen == {"partners": {"count": 7}, "clients": {}}
