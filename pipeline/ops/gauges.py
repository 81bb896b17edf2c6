"""Gauges measured now and then rather than as events happen: each partner's
Kafka backlog on this worker's partitions and each budget's used fraction."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable

from prometheus_client import Gauge

from pipeline.config import Settings
from pipeline.kafka.lag import GroupLag, backlog_by_partner
from pipeline.ops.metrics import Metrics
from pipeline.partners import Registry
from pipeline.state import BudgetLedger

log = logging.getLogger("pipeline.worker")


def retire(gauge: Gauge, series: Iterable[tuple[str, ...]]) -> None:
    """Series no longer measured. One process drops them; under `worker --processes`
    prometheus-client cannot drop a series from its shared files (it only warns),
    so they read 0: no backlog, nothing spent against a budget that is gone."""
    shared = "PROMETHEUS_MULTIPROC_DIR" in os.environ
    for labels in series:
        if shared:
            gauge.labels(*labels).set(0)
        else:
            gauge.remove(*labels)


class Gauges:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        registry: Registry,
        ledger: BudgetLedger,
        owned: Callable[[], set[tuple[str, int]]],
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = registry
        self.ledger = ledger
        self._owned = owned
        self._budgets_shown: set[tuple[str, str]] = set()

    async def run(self) -> None:
        """Each partner's Kafka backlog on this worker's partitions, now and then."""
        probe: GroupLag | None = None
        shown: set[str] = set()
        try:
            while True:
                try:
                    if probe is None:
                        probe = await asyncio.to_thread(GroupLag, self.settings)
                    lags = await asyncio.to_thread(probe.measure, set(self._owned()))
                except Exception as exc:  # a metric must never stop the worker
                    log.warning("cannot measure the backlog", extra={"error": str(exc)})
                else:
                    backlog = backlog_by_partner(lags)
                    retire(self.metrics.backlog, ((p,) for p in shown - set(backlog)))
                    for partner, records in backlog.items():
                        self.metrics.backlog.labels(partner).set(records)
                    shown = set(backlog)
                self.measure_budgets()
                await asyncio.sleep(self.settings.backlog_interval_s)
        finally:
            if probe is not None:
                await asyncio.to_thread(probe.close)

    def measure_budgets(self) -> None:
        """Each budget's used fraction (the state log is group-wide: every worker
        reports the same figure, so dashboards take the max)."""
        shown: set[tuple[str, str]] = set()
        for partner in self.registry:
            for budget in self.ledger.budgets(partner):
                if budget.limit > 0:
                    spent = self.ledger.spent(partner.partner_id, budget.kind, budget.period)
                    used = self.metrics.budget_used.labels(partner.partner_id, budget.kind)
                    used.set(spent / budget.limit)
                    shown.add((partner.partner_id, budget.kind))
        retire(self.metrics.budget_used, self._budgets_shown - shown)
        self._budgets_shown = shown
