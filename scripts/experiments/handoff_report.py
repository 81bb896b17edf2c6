"""Print what handoff/sitecustomize.py wrote: python handoff_report.py /tmp/handoff.*"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.dev.bench.result import pct


def report(path: str) -> None:
    data = json.loads(Path(path).read_text())
    for name in ("created", "thread", "main"):
        xs = data[name]
        print(
            f"{path} {name:8} n={len(xs)} p50 {pct(xs, 50)} p90 {pct(xs, 90)} p99 {pct(xs, 99)} ms"
        )
    for name, spans in data["cycles"].items():
        took = [(end - start) * 1000 for start, end in spans]
        gaps = [(spans[i + 1][0] - spans[i][1]) * 1000 for i in range(len(spans) - 1)]
        print(
            f"  fetcher {name}: {len(spans)} fetches, each p50 {pct(took, 50)} p90 {pct(took, 90)}"
            f" ms; to the next p50 {pct(gaps, 50)} p90 {pct(gaps, 90)} p99 {pct(gaps, 99)} ms"
        )


if __name__ == "__main__":
    for p in sys.argv[1:]:
        report(p)
