"""Seeded fault injection: one draw per request, so a seed replays a run."""

from __future__ import annotations

import random
from collections.abc import Mapping

from pipeline.dev.sim.config import FAULT_KINDS


class FaultInjector:
    def __init__(self, rates: Mapping[str, float], seed: int | None) -> None:
        self._rng = random.Random(seed)
        # Fixed order so the same seed maps a draw to the same fault.
        self._table = [(k, rates[k]) for k in FAULT_KINDS if rates.get(k, 0.0) > 0.0]

    def draw(self) -> str | None:
        """The fault this request suffers, or None."""
        if not self._table:
            return None
        u = self._rng.random()
        edge = 0.0
        for kind, p in self._table:
            edge += p
            if u < edge:
                return kind
        return None
