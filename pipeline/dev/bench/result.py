"""What a benchmark scenario returns, and the helpers every scenario uses."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.dev.bench.rig import Outcome
from pipeline.ops.dlq import percentile

Say = Callable[[str], None]
Progress = Callable[[int, int], None]


@dataclass
class Result:
    scenario: str
    params: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    #: metric -> ">= x" or "<= x"
    targets: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: With several runs: metric -> [min, max] over them (`metrics` holds medians).
    spread: dict[str, list[float]] = field(default_factory=dict)
    #: With several runs: did every run meet every target on its own?
    met_every_run: bool | None = None

    @property
    def met(self) -> bool:
        return all(meets(self.metrics.get(name), rule) for name, rule in self.targets.items())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "scenario": self.scenario,
            "params": self.params,
            "metrics": self.metrics,
            "targets": self.targets,
            "met": self.met,
            "notes": self.notes,
        }
        if self.spread:
            out["min_max"] = self.spread
            out["met_every_run"] = self.met_every_run
        return out


def combine(runs: Sequence[Result]) -> Result:
    """Several runs of one scenario as one result: the median of each metric, with
    its min and max, so that one noisy run decides nothing."""
    first = runs[0]
    if len(runs) == 1:
        return first
    metrics: dict[str, float] = {}
    spread: dict[str, list[float]] = {}
    for name in first.metrics:
        values = sorted(r.metrics[name] for r in runs if name in r.metrics)
        metrics[name] = round(float(statistics.median(values)), 4)
        spread[name] = [values[0], values[-1]]
    notes = [note for r in runs for note in r.notes if note]
    return Result(
        first.scenario,
        {**first.params, "runs": len(runs)},
        metrics,
        first.targets,
        list(dict.fromkeys(notes)),
        spread,
        all(r.met for r in runs),
    )


def meets(value: float | None, rule: str) -> bool:
    if value is None:
        return False
    op, bound = rule.split()
    return value >= float(bound) if op == ">=" else value <= float(bound)


def pct(values: Sequence[float], q: float) -> float:
    got = percentile(list(values), q)
    return round(float(got), 1) if got is not None else float("nan")


def ok_only(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.status == "ok"]


def between(outcomes: list[Outcome], start_ms: float, end_ms: float) -> list[Outcome]:
    return [o for o in outcomes if start_ms <= o.completed_at_ms < end_ms]


def now_ms() -> float:
    return time.time() * 1000
