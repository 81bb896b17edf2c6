"""Gauges measured now and then rather than as events happen: each partner's
Kafka backlog on this worker's partitions and each budget's used fraction."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pipeline.config import Settings
from pipeline.lag import GroupLag, backlog_by_partner
from pipeline.metrics import Metrics
from pipeline.partners import Registry
from pipeline.state import BudgetLedger

log = logging.getLogger("pipeline.worker")


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
                    for partner in shown - set(backlog):
                        self.metrics.backlog.remove(partner)
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
        self.metrics.budget_used.clear()
        for partner in self.registry:
            for budget in self.ledger.budgets(partner):
                if budget.limit > 0:
                    spent = self.ledger.spent(partner.partner_id, budget.kind, budget.period)
                    used = self.metrics.budget_used.labels(partner.partner_id, budget.kind)
                    used.set(spent / budget.limit)
