"""`claude-pipeline bench SCENARIO`: measured side by side, written to bench-results/."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO

from pipeline.ops import render_table

RESULTS_DIR = Path("bench-results")


class _Bar:
    """A one-line progress bar on a terminal (plain lines elsewhere)."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.tty = out.isatty()
        self._last = 0.0

    def say(self, text: str) -> None:
        if self.tty:
            self.out.write("\r\033[K")
        self.out.write(f"  {text}\n")
        self.out.flush()

    def progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.tty or now - self._last < 0.2:
            return
        self._last = now
        width = 30
        filled = int(width * done / max(1, total))
        self.out.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        self.out.flush()

    def clear(self) -> None:
        if self.tty:
            self.out.write("\r\033[K")
            self.out.flush()


def run(names: list[str], *, quick: bool, results_dir: Path, out: IO[str] = sys.stdout) -> int:
    """Run scenarios in order; write one JSON file each; 0 if all ran (met or not)."""
    from pipeline.bench.scenarios import SCENARIOS, Result

    results_dir.mkdir(parents=True, exist_ok=True)
    bar = _Bar(sys.stderr)
    rows = []
    for name in names:
        out.write(f"{name}{' (quick)' if quick else ''}\n")
        out.flush()
        started = time.monotonic()
        fn = SCENARIOS[name]
        kwargs = {"results_dir": results_dir} if name == "latency" else {}
        result: Result = fn(quick, bar.say, bar.progress, **kwargs)
        bar.clear()
        result.params["quick"] = quick
        result.params["seconds_taken"] = round(time.monotonic() - started, 1)
        (results_dir / f"{name}.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
        for metric, value in result.metrics.items():
            target = result.targets.get(metric, "")
            rows.append(
                {
                    "scenario": name,
                    "metric": metric,
                    "value": f"{value:g}",
                    "target": target or "-",
                    "met": ("yes" if _met(value, target) else "NO") if target else "",
                }
            )
        out.write(render_table(rows[-len(result.metrics) :], list(rows[0])) + "\n\n")
        out.flush()
    if len(names) > 1:
        out.write(render_table(rows, list(rows[0])) + "\n")
    return 0


def _met(value: float, target: str) -> bool:
    from pipeline.bench.scenarios import _meets

    return _meets(value, target)
