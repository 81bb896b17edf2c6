from __future__ import annotations

import json
from pathlib import Path

from pipeline.dev.bench.scenarios import _stages


def test_stages_come_from_the_workers_served_lines(tmp_path: Path) -> None:
    lines = [
        {"msg": "served", "intake_lag_ms": lag, "queued_ms": 0, "upstream_ms": 200 + extra}
        for lag, extra in [(10, 1), (20, 2), (30, 3), (400, 90)]
    ]
    lines.append({"msg": "dead-lettered", "intake_lag_ms": 9_999})  # not a served request
    log = tmp_path / "worker.log"
    log.write_text("worker starting (not JSON)\n" + "".join(json.dumps(x) + "\n" for x in lines))
    got = _stages(log, sim_ms=200)
    assert got["intake_p50_ms"] == 25.0  # interpolated, as every bench percentile
    assert 380 < got["intake_p99_ms"] <= 400
    assert got["queued_p99_ms"] == 0.0
    assert got["upstream_added_p50_ms"] == 2.5
    assert 80 < got["upstream_added_p99_ms"] <= 90


def test_the_intake_is_split_where_the_served_lines_split_it(tmp_path: Path) -> None:
    lines = [
        {"msg": "served", "intake_lag_ms": 14, "kafka_ms": 9, "stream_ms": 4, "admit_ms": 1},
        {"msg": "served", "intake_lag_ms": 30, "kafka_ms": 11, "stream_ms": 16, "admit_ms": 3},
        {"msg": "served", "intake_lag_ms": 12},  # a record that did not say when it came
    ]
    log = tmp_path / "worker.log"
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    got = _stages(log, sim_ms=200)
    assert (got["intake_kafka_p50_ms"], got["intake_stream_p50_ms"]) == (10.0, 10.0)
    assert got["intake_admit_p50_ms"] == 2.0
    assert got["intake_p50_ms"] == 14.0


def test_the_time_to_the_event_loop_is_given_for_the_runs_first_and_last_fifth(
    tmp_path: Path,
) -> None:
    kafka = [5, 6, 5, 6, 7, 8, 9, 10, 14, 16]  # in the order served
    lines = [{"msg": "served", "intake_lag_ms": k, "kafka_ms": k} for k in kafka]
    log = tmp_path / "worker.log"
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    got = _stages(log, sim_ms=200)
    assert got["intake_kafka_first_fifth_p50_ms"] == 5.5
    assert got["intake_kafka_last_fifth_p50_ms"] == 15.0
