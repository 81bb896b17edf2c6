"""`claude-pipeline bench SCENARIO`: measured side by side, written to bench-results/."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO, Any

from pipeline.ops.dlq import render_table

RESULTS_DIR = Path("bench-results")


class _Bar:
    """Progress on a terminal (tqdm, as the other long commands), plain lines elsewhere."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self._bar: Any = None

    def say(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"  {text}", file=self.out)

    def progress(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None or self._bar.total != total:
            self.clear()
            self._bar = tqdm(
                total=total, file=self.out, disable=None, leave=False, unit=" outcomes"
            )
        self._bar.update(done - self._bar.n)

    def clear(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def run(
    names: list[str],
    *,
    quick: bool,
    results_dir: Path,
    runs: int = 1,
    count: int | None = None,
    out: IO[str] = sys.stdout,
) -> int:
    """Run scenarios in order (each `runs` times: medians, with min and max); write
    one JSON file each; 0 if all ran (met or not)."""
    from pipeline.dev.bench.result import Result, combine
    from pipeline.dev.bench.scenarios import SCENARIOS

    results_dir.mkdir(parents=True, exist_ok=True)
    bar = _Bar(sys.stderr)
    rows = []
    for name in names:
        started = time.monotonic()
        each: list[Result] = []
        for i in range(runs):
            label = f" run {i + 1} of {runs}" if runs > 1 else ""
            out.write(f"{name}{' (quick)' if quick else ''}{label}\n")
            out.flush()
            fn = SCENARIOS[name]
            kwargs: dict[str, Any] = {}
            if name == "latency":
                kwargs["results_dir"] = results_dir
            elif name == "partners":
                kwargs["count"] = count
            each.append(fn(quick, bar.say, bar.progress, **kwargs))
            bar.clear()
        result = combine(each)
        result.params["quick"] = quick
        result.params["seconds_taken"] = round(time.monotonic() - started, 1)
        (results_dir / f"{name}.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
        for metric, value in result.metrics.items():
            target = result.targets.get(metric, "")
            row = {"scenario": name, "metric": metric, "value": f"{value:g}"}
            if runs > 1:
                low, high = result.spread.get(metric, [value, value])
                row["min-max"] = f"{low:g}-{high:g}"
            row["target"] = target or "-"
            row["met"] = ("yes" if _met(value, target) else "NO") if target else ""
            rows.append(row)
        out.write(render_table(rows[-len(result.metrics) :], list(rows[0])) + "\n")
        if result.met_every_run is not None:
            out.write(f"every target met in every run: {'yes' if result.met_every_run else 'no'}\n")
        if quick and result.targets:
            out.write(
                "(--quick is a smoke run, what CI runs so the benchmarks never rot: its "
                "targets are informational; full runs judge them, see docs/performance.md)\n"
            )
        out.write("\n")
        out.flush()
    if len(names) > 1:
        out.write(render_table(rows, list(rows[0])) + "\n")
    return 0


def _met(value: float, target: str) -> bool:
    from pipeline.dev.bench.result import meets

    return meets(value, target)
