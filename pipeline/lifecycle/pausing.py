"""Kafka stays the buffer: a partner whose queue is full stops being fetched.

One class owns the pause state of every partner, the way quix-streams'
`PausingManager` does: pause when a partner's queue reaches its bound, resume
when it has drained to half, re-apply the pauses after a rebalance hands the
worker fresh partitions (which start unpaused).
"""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger("pipeline.lifecycle.pausing")


#: Heavy records (over `HEAVY_BYTES`) being examined that fill a partner's bound.
MAX_EXAMINING = 4


def _count(counts: dict[str, int], key: str, delta: int) -> None:
    left = counts.get(key, 0) + delta
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class FlowControl(Protocol):
    """Stop and restart fetching a partner's request topic."""

    def pause(self, partner_id: str) -> None: ...

    def resume(self, partner_id: str) -> None: ...


class NoFlowControl:
    def pause(self, partner_id: str) -> None:
        pass

    def resume(self, partner_id: str) -> None:
        pass


class Pausing:
    """What counts toward a partner's bound: its queued requests, and its records
    refused at intake whose outcomes are still being published (a partner
    flooding bad records is held back like one flooding good ones)."""

    def __init__(self, flow: FlowControl, max_queued: int) -> None:
        self._flow = flow
        self._max = max_queued
        self._paused: set[str] = set()
        self._depth: dict[str, int] = {}
        self._refusing: dict[str, int] = {}
        self._examining: dict[str, int] = {}

    @property
    def paused(self) -> frozenset[str]:
        return frozenset(self._paused)

    def queued(self, partner_id: str, depth: int) -> None:
        """A partner's queue depth changed."""
        self._depth[partner_id] = depth
        self._update(partner_id)

    def refusing(self, partner_id: str, delta: int) -> None:
        """A refused record's outcome started (+1) or finished (-1) publishing."""
        _count(self._refusing, partner_id, delta)
        self._update(partner_id)

    def examining(self, partner_id: str, delta: int) -> None:
        """A heavy record's examination started (+1) or finished (-1): megabytes
        each, so a few of them fill a partner's bound (`MAX_EXAMINING`)."""
        _count(self._examining, partner_id, delta)
        self._update(partner_id)

    def _update(self, partner_id: str) -> None:
        """Pause a partner when full, resume it when half empty."""
        examining = self._examining.get(partner_id, 0)
        depth = self._depth.get(partner_id, 0) + self._refusing.get(partner_id, 0)
        depth += examining * max(1, self._max // MAX_EXAMINING)
        if partner_id not in self._paused and depth >= self._max:
            self._paused.add(partner_id)
            self._flow.pause(partner_id)
            log.info(
                "partner queue full: pausing its topic",
                extra={"partner": partner_id, "queued": depth},
            )
        elif partner_id in self._paused and depth <= self._max // 2:
            self._paused.discard(partner_id)
            self._flow.resume(partner_id)
            log.info("partner queue drained: resuming its topic", extra={"partner": partner_id})

    def reapply(self) -> None:
        """After a rebalance: partitions newly assigned are not paused, but their
        partners' queues may still be full."""
        for partner_id in sorted(self._paused):
            self._flow.pause(partner_id)
