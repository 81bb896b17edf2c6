"""May a queued request be sent now? Gates that decide and change nothing.

Three gates, in the order the scheduler asks them: the partner's budgets, the
partner's own rate limits, the upstream key's limits (a 429 pause and probing
included). Each returns an `AdmissionVerdict`; the dispatcher acts on it (charges
the limits, reserves the budget, or ends the request).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from pipeline.errors import QuotaExceeded, RequestError
from pipeline.limits.pricing import BATCH_MULTIPLIER
from pipeline.limits.ratelimit import Limiter, Throttle, Verdict
from pipeline.partners import Registry
from pipeline.records import Admitted
from pipeline.state import BudgetLedger, BudgetState
from pipeline.upstream.keys import UNRESOLVED

log = logging.getLogger("pipeline.lifecycle.admission")

#: How soon to ask again while requests in flight may still fit a budget.
BUDGET_RECHECK_S = 0.05


class Decision(Enum):
    GO = "go"
    WAIT = "wait"
    REFUSE = "refuse"  # send it on its way to a dead letter: it can never go


@dataclass(frozen=True)
class AdmissionVerdict:
    decision: Decision
    wait_s: float = 0.0
    throttle: Throttle | None = None
    error: RequestError | None = None

    @property
    def leaves_queue(self) -> bool:
        return self.decision is not Decision.WAIT


GO = AdmissionVerdict(Decision.GO)


def _from_limiter(verdict: Verdict) -> AdmissionVerdict:
    if verdict.go:
        return GO
    return AdmissionVerdict(Decision.WAIT, verdict.wait_s, verdict.reason)


class Admission:
    def __init__(self, registry: Registry, limiter: Limiter, ledger: BudgetLedger | None) -> None:
        self._registry = registry
        self._limiter = limiter
        self._ledger = ledger

    def partner(self, admitted: Admitted, *, batch: bool = False) -> AdmissionVerdict:
        """The partner's budgets and rate limits (a `batch` request: its budgets at
        the batch price only; the Batches API has its own limits)."""
        partner = self._registry.get(admitted.partner_id)
        if partner is None or not partner.enabled:
            return GO  # it fails fast at its attempt, without calling Claude
        if self._ledger is not None and partner.has_budget:
            usd = admitted.worst_usd * (BATCH_MULTIPLIER if batch else 1.0)
            budget = self._ledger.check(partner, admitted.worst_tokens, usd)
            if budget.state is BudgetState.EXCEEDED:
                return AdmissionVerdict(Decision.REFUSE, error=QuotaExceeded(budget.detail))
            if budget.state is BudgetState.WAIT:
                return AdmissionVerdict(Decision.WAIT, BUDGET_RECHECK_S, Throttle.BUDGET_PENDING)
        if batch:
            return GO
        return _from_limiter(self._limiter.partner_wait(partner, admitted.cost))

    def key(
        self, kid: str, admitted: Admitted, new: bool, *, batch: bool = False
    ) -> AdmissionVerdict:
        """The upstream key's limits. A partner that just became active (`new`) may use
        the headroom the key's view keeps back."""
        if batch or kid.startswith(UNRESOLVED):
            return GO  # no key to spend: it fails fast at its attempt
        return _from_limiter(self._limiter.key_wait(kid, admitted.cost, headroom=not new))


class ThrottleLog:
    """One `partner throttled` line when a partner starts being held back, saying by
    what and whose limit it is; again only if the reason changes or 5 s pass."""

    def __init__(self, mono: Callable[[], float], every_s: float = 5.0) -> None:
        self._mono = mono
        self._every_s = every_s
        self._last: dict[str, tuple[Throttle | None, float]] = {}

    def note(self, partner_id: str, verdict: AdmissionVerdict, queued: int) -> None:
        now = self._mono()
        last = self._last.get(partner_id)
        if last is not None and last[0] == verdict.throttle and now - last[1] < self._every_s:
            return
        self._last[partner_id] = (verdict.throttle, now)
        throttle = verdict.throttle
        log.info(
            "partner throttled",
            extra={
                "partner": partner_id,
                "reason": throttle.value if throttle is not None else None,
                "by": throttle.scope if throttle is not None else None,
                "wait_ms": int(verdict.wait_s * 1000),
                "queued": queued,
            },
        )

    def clear(self, partner_id: str) -> None:
        self._last.pop(partner_id, None)
