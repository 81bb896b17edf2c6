"""Several benchmark runs make one result: medians, min and max, every run judged."""

from __future__ import annotations

import subprocess
import sys

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


def test_runs_must_be_positive_one_line_exit_2() -> None:
    got = subprocess.run(
        [sys.executable, "-m", "pipeline", "bench", "latency", "--runs", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert got.returncode == 2
    assert got.stderr.strip().count("\n") == 0
    assert "--runs" in got.stderr
