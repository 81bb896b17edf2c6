"""The request lifecycle's parts, each on its own: admission, completion, pausing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.errors import InvalidRequest, NotSent, QuotaExceeded
from pipeline.lifecycle.admission import Admission, AdmissionVerdict, Decision, ThrottleLog
from pipeline.lifecycle.completion import (
    Arrival,
    Completion,
    CompletionConfig,
    Deliveries,
    Reporter,
)
from pipeline.lifecycle.outcomes import OutcomeBuilder
from pipeline.lifecycle.pausing import Pausing
from pipeline.limits.pricing import PriceTable
from pipeline.limits.ratelimit import Limiter, Throttle
from pipeline.ops.metrics import Metrics
from pipeline.partners import Partner, Registry
from pipeline.records import Admitted, Job, OutMessage, SourceRecord
from pipeline.schemas import Codec
from pipeline.state import BudgetLedger, MemoryStore
from pipeline.upstream.claude import ClaudeClient
from tests.unit.test_dispatch import FakeClaude, Harness


class Lines(list[logging.LogRecord]):
    def __init__(self) -> None:
        super().__init__()
        self.logged = asyncio.Event()


@contextlib.contextmanager
def capture(logger: str) -> Iterator[Lines]:
    records = Lines()

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)
            records.logged.set()

    handler, target = Keep(), logging.getLogger(logger)
    target.addHandler(handler)
    target.setLevel(logging.INFO)
    try:
        yield records
    finally:
        target.removeHandler(handler)


def _admitted(partner: Partner, worst_usd: float = 0.01) -> Admitted:
    record = SourceRecord("claude.requests.acme", 0, 1, b"r1", b"v", [])
    request: Any = {"request_id": "r1", "max_tokens": 10, "deadline_ms": None}
    return Admitted(record, partner, request, {}, 0, 0.0, 5, worst_tokens=15, worst_usd=worst_usd)


def test_admission_decides_and_changes_nothing() -> None:
    partner = Partner("acme", "env:S", monthly_budget_usd=0.5)
    registry = Registry()
    registry.apply("acme", partner)
    store = MemoryStore()
    admission = Admission(registry, Limiter(upstream={"requests": 100}), BudgetLedger(store))
    admitted = _admitted(partner, worst_usd=1.0)
    first = admission.partner(admitted)
    assert first.decision is Decision.REFUSE
    assert isinstance(first.error, QuotaExceeded)
    again = admission.partner(admitted)  # asking again: the same answer
    assert (again.decision, str(again.error)) == (first.decision, str(first.error))
    assert store.data == {}
    assert admission.key("unresolved:acme", admitted, new=True).decision is Decision.GO


def test_a_batch_request_is_held_by_its_budget_at_half_price_and_by_no_rate_limit() -> None:
    partner = Partner("acme", "env:S", monthly_budget_usd=0.6, rpm=1)
    registry = Registry()
    registry.apply("acme", partner)
    limiter = Limiter(upstream={"requests": 1})
    admission = Admission(registry, limiter, BudgetLedger(MemoryStore()))
    admitted = _admitted(partner, worst_usd=1.0)
    # $1.00 at list price is over the $0.60 budget; at the batch price it fits
    assert admission.partner(admitted).decision is Decision.REFUSE
    assert admission.partner(admitted, batch=True).decision is Decision.GO
    limiter.consume(partner, "k1", admitted.cost)  # the partner's and the key's one request
    assert admission.partner(_admitted(partner, worst_usd=0.0)).decision is Decision.WAIT
    assert admission.key("k1", admitted, new=False).decision is Decision.WAIT
    assert admission.partner(admitted, batch=True).decision is Decision.GO
    assert admission.key("k1", admitted, new=False, batch=True).decision is Decision.GO


async def test_a_request_waiting_for_the_budget_is_logged_as_held_by_its_budget() -> None:
    # Before: a budget wait was logged as "the upstream key's limit".
    claude = FakeClaude()
    claude.gate = asyncio.Event()
    probe = Harness(FakeClaude())
    worst = probe.intake.admit(probe.record("b 00", max_tokens=100)).worst_usd
    h = Harness(claude, partner=Partner("acme", "env:S", monthly_budget_usd=worst * 1.5))
    await h.dispatcher.start()
    with capture("pipeline.lifecycle.admission") as lines:
        await h.send(h.record("b 01", max_tokens=100))  # reserves the worst case
        await h.send(h.record("b 02", max_tokens=100))  # may still fit: waits
        async with asyncio.timeout(5):
            await lines.logged.wait()
    (line,) = [r for r in lines if r.getMessage() == "partner throttled"]
    assert (line.reason, line.by) == ("budget_pending", "its budget")  # type: ignore[attr-defined]
    claude.gate.set()
    await h.settle(2)
    await h.dispatcher.stop(0)


def test_every_throttle_names_whose_limit_it_is() -> None:
    scopes = {t: t.scope for t in Throttle}
    assert scopes[Throttle.PARTNER_RPM] == scopes[Throttle.PARTNER_TPM] == "its own limit"
    assert scopes[Throttle.BUDGET_PENDING] == "its budget"
    assert scopes[Throttle.PAUSED] == "a 429 pause"
    assert scopes[Throttle.KEY_REQUESTS] == scopes[Throttle.PROBING] == "the upstream key's limit"


def test_the_throttle_log_says_it_once_until_the_reason_changes() -> None:
    now = [0.0]
    log = ThrottleLog(lambda: now[0])
    wait = AdmissionVerdict(Decision.WAIT, 1.0, Throttle.PARTNER_RPM)
    with capture("pipeline.lifecycle.admission") as lines:
        for _ in range(3):
            log.note("acme", wait, 3)
        now[0] = 6.0
        log.note("acme", wait, 3)
        log.note("acme", AdmissionVerdict(Decision.WAIT, 1.0, Throttle.PAUSED), 3)
    assert [line.reason for line in lines] == ["partner_rpm", "partner_rpm", "paused"]  # type: ignore[attr-defined]


async def test_a_bug_while_building_the_call_is_not_a_retriable_network_error() -> None:
    # Before: any exception was classified as a retriable "connection" error.
    client = ClaudeClient("http://127.0.0.1:9", 1.0)
    try:
        with pytest.raises(NotSent) as info:  # not sent: not charged, not retried
            await client.create("sk-x", {"model": "m", "not json": object()})
        assert isinstance(info.value.__cause__, TypeError)
    finally:
        await client.close()


async def test_a_bug_at_the_upstream_stage_ends_as_internal_error_after_one_call() -> None:
    class Buggy(FakeClaude):
        async def create(
            self, api_key: str, params: Any, *, body: Any = None, headers: Any = None
        ) -> Any:
            self.calls.append("x")
            raise TypeError("a bug of ours")

    h = Harness(Buggy())
    await h.dispatcher.start()
    await h.send(h.record("boom"))
    await h.settle(1)
    await h.dispatcher.stop(0)
    assert h.claude.calls == ["x"]  # not retried
    (dead,) = h.dead_letters()
    assert dead["reason"] == "internal_error"
    assert "TypeError" in dead["detail"]
    assert "a bug of ours" not in dead["detail"]  # exception text may quote prompts


class _Publisher:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    async def publish(self, messages: list[OutMessage]) -> None:
        self.events.append("published")


async def test_completion_publishes_then_waits_for_durability_then_acks() -> None:
    events: list[str] = []
    deliveries = Deliveries()
    codec = Codec()
    builder = OutcomeBuilder(PriceTable(), lambda: 1)
    completion = Completion(
        publisher=_Publisher(events),
        codec=codec,
        builder=builder,
        deliveries=deliveries,
        reporter=Reporter(Metrics()),
        guard=None,
        config=CompletionConfig(),
    )
    record = SourceRecord("claude.requests.acme", 0, 9, b"r9", b"v", [])

    async def ack() -> None:
        events.append("acked")

    assert deliveries.arrive(record.position, ack) is Arrival.NEW
    assert deliveries.arrive(record.position, ack) is Arrival.IN_FLIGHT
    durable: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    job = Job(_admitted(Partner("acme", "env:S")))
    job.progress.durable.append(durable)
    outcome = builder.failure(record, InvalidRequest("x"), partner_id="acme", request_id="r9")
    finishing = asyncio.create_task(completion.finish(outcome, job))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert events == ["published"]  # not acked before the state is durable
    durable.set_result(None)
    await finishing
    assert events == ["published", "acked", "acked"]  # both deliveries
    assert deliveries.arrive(record.position, ack) is Arrival.DONE


def test_pausing_pauses_when_full_resumes_at_half_and_reapplies() -> None:
    calls: list[tuple[str, str]] = []

    class Flow:
        def pause(self, partner_id: str) -> None:
            calls.append(("pause", partner_id))

        def resume(self, partner_id: str) -> None:
            calls.append(("resume", partner_id))

    pausing = Pausing(Flow(), max_queued=4)
    for depth in (1, 2, 3, 4, 5, 4, 3, 2):
        pausing.queued("acme", depth)
    assert calls == [("pause", "acme"), ("resume", "acme")]
    pausing.queued("acme", 4)
    pausing.reapply()
    assert calls[-2:] == [("pause", "acme"), ("pause", "acme")]
    assert pausing.paused == {"acme"}


class _RecordingStore(MemoryStore):
    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def put(self, key: str, value: Any) -> None:
        self.events.append(f"durable {value['s']}")
        super().put(key, value)


async def test_the_done_marker_is_written_only_after_the_outcome_is_on_the_broker() -> None:
    # Before: the marker was sent with the outcome. A kill -9 between the two left
    # "done" durable and the usage record (or the response) unpublished; the
    # redelivered record was then skipped as already served: a loss.
    from pipeline.state import ReplayGuard

    events: list[str] = []
    deliveries = Deliveries()
    builder = OutcomeBuilder(PriceTable(), lambda: 1)
    guard = ReplayGuard(_RecordingStore(events), 300.0)
    completion = Completion(
        publisher=_Publisher(events),
        codec=Codec(),
        builder=builder,
        deliveries=deliveries,
        reporter=Reporter(Metrics()),
        guard=guard,
        config=CompletionConfig(),
    )
    record = SourceRecord("claude.requests.acme", 0, 3, b"r1", b"v", [])

    async def ack() -> None:
        events.append("acked")

    deliveries.arrive(record.position, ack)
    job = Job(_admitted(Partner("acme", "env:S")))
    outcome = builder.failure(record, InvalidRequest("x"), partner_id="acme", request_id="r1")
    await completion.finish(outcome, job)
    assert events == ["published", "durable done", "acked"]
