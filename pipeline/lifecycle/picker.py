"""The next request to send: the fair queue's pick among the requests every gate
lets go (budget, partner limits, the upstream key's limits), then its charge on
the rate limits and the reservation of its worst-case cost on its budgets."""

from __future__ import annotations

from pipeline.lifecycle.admission import Admission, AdmissionVerdict, Decision, ThrottleLog
from pipeline.lifecycle.backlog import Backlog
from pipeline.limits.pricing import BATCH_MULTIPLIER
from pipeline.limits.ratelimit import Limiter
from pipeline.partners import Registry
from pipeline.records import Charge, Job
from pipeline.state import BudgetLedger
from pipeline.upstream.keys import UNRESOLVED


class Picker:
    def __init__(
        self,
        backlog: Backlog,
        admission: Admission,
        throttles: ThrottleLog,
        registry: Registry,
        limiter: Limiter,
        ledger: BudgetLedger | None,
    ) -> None:
        self._backlog = backlog
        self._admission = admission
        self._throttles = throttles
        self._registry = registry
        self._limiter = limiter
        self._ledger = ledger

    def pick(self) -> tuple[tuple[Job, AdmissionVerdict] | None, list[float]]:
        """One round of the scheduler: the request picked (and its verdict), or how
        long each gate that held something back wants us to wait."""
        verdicts: dict[str, AdmissionVerdict] = {}
        refused: dict[int, AdmissionVerdict] = {}

        def partner_ok(partner_id: str, job: Job) -> bool:
            verdict = self._admission.partner(job.admitted, batch=job.progress.batch)
            if verdict.decision is Decision.REFUSE:
                refused[id(job)] = verdict
            return self._gate(f"partner:{partner_id}", partner_id, verdict, verdicts)

        def key_ok(kid: str, job: Job, new: bool) -> bool:
            verdict = self._admission.key(kid, job.admitted, new, batch=job.progress.batch)
            return self._gate(f"key:{kid}", job.partner_id, verdict, verdicts)

        picked = self._backlog.pop(partner_ok, key_ok)
        if picked is None:
            return None, [v.wait_s for v in verdicts.values()]
        partner_id, job = picked
        self._throttles.clear(partner_id)
        return (job, refused.get(id(job), AdmissionVerdict(Decision.GO))), []

    def _gate(
        self,
        what: str,
        partner_id: str,
        verdict: AdmissionVerdict,
        verdicts: dict[str, AdmissionVerdict],
    ) -> bool:
        if verdict.decision is Decision.WAIT:
            verdicts[what] = verdict
            self._throttles.note(partner_id, verdict, self._backlog.depth(partner_id))
        return verdict.leaves_queue

    def charge(self, job: Job) -> None:
        """Take the request's charge on the rate limits and reserve its budget."""
        partner = self._registry.get(job.partner_id)
        kid = job.progress.key_id
        if partner is None or kid is None or kid.startswith(UNRESOLVED):
            return  # it fails fast at its attempt, holding nothing
        batch = job.progress.batch  # the Batches API's limits are not ours to keep
        if not batch:
            seq = self._limiter.consume(partner, kid, job.admitted.cost)
            job.progress.charge = Charge(kid, seq, job.admitted.cost)
        if self._ledger is not None and partner.has_budget:
            job.progress.reservation = self._ledger.reserve(
                partner,
                job.record.partition,
                job.admitted.worst_tokens,
                job.admitted.worst_usd * (BATCH_MULTIPLIER if batch else 1.0),
            )
