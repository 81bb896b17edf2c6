"""Failpoints: die like `kill -9` at a chosen point, for tests of what a crash leaves.

`PIPELINE_FAILPOINTS=after_publish=20` makes the worker exit at once (no flush,
no cleanup, exit status 137) the 20th time it passes `after_publish`. Points:

- `before_publish`: an outcome is ready, nothing of it is on the broker;
- `after_publish`: the outcome's records are on the broker, its done marker is not;
- `after_marker`: the done marker is durable too, the offset is not acked;
- `batch_before_submit`: a batch entry is durable, its create call not made;
- `batch_after_submit`: the batch exists upstream, its id is not in the state log;
- `batch_polling`: a submitted batch is being polled;
- `batch_after_results`: its results are read, none answered.

Empty in production: `hit` is then one dictionary lookup.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

from pipeline.errors import ConfigError

log = logging.getLogger("pipeline.failpoints")

POINTS = (
    "before_publish",
    "after_publish",
    "after_marker",
    "batch_before_submit",
    "batch_after_submit",
    "batch_polling",
    "batch_after_results",
)


def parse(spec: str | None) -> dict[str, int]:
    """`point=N[,point=N]` as {point: N}; ConfigError names what is wrong."""
    out: dict[str, int] = {}
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        name, _, count = item.strip().partition("=")
        if name not in POINTS or not count.isdigit() or int(count) < 1:
            raise ConfigError(
                f"PIPELINE_FAILPOINTS: expected point=N with point one of {', '.join(POINTS)}, "
                f"got {item.strip()!r}"
            )
        out[name] = int(count)
    return out


class Failpoints:
    def __init__(self, armed: dict[str, int] | None = None) -> None:
        self._armed = dict(armed or {})
        self._passed: Counter[str] = Counter()

    def hit(self, point: str) -> None:
        if point not in self._armed:
            return
        self._passed[point] += 1
        if self._passed[point] >= self._armed[point]:
            log.critical("failpoint reached: exiting like kill -9", extra={"point": point})
            os._exit(137)
