"""Kafka stays the buffer: a partner whose queue is full stops being fetched.

One class owns the pause state of every partner, the way quix-streams'
`PausingManager` does: pause when a partner's queue reaches its bound, resume
when it has drained to half, re-apply the pauses after a rebalance hands the
worker fresh partitions (which start unpaused).
"""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger("pipeline.pausing")


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
    def __init__(self, flow: FlowControl, max_queued: int) -> None:
        self._flow = flow
        self._max = max_queued
        self._paused: set[str] = set()

    @property
    def paused(self) -> frozenset[str]:
        return frozenset(self._paused)

    def queued(self, partner_id: str, depth: int) -> None:
        """A partner's queue depth changed: pause it when full, resume it when half empty."""
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
