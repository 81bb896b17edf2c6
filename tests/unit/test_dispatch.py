"""The dispatcher with fakes at its two edges (Claude and the publisher).

Kafka itself is exercised by the integration tests; here we pin down the
request lifecycle: retries, outcomes, acks after publish, redelivery dedupe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any

import pytest

from pipeline.client import build_request
from pipeline.errors import UpstreamError
from pipeline.lifecycle.dispatch import DispatchConfig, Dispatcher, assemble
from pipeline.lifecycle.examiner import Examiner
from pipeline.lifecycle.intake import Intake
from pipeline.lifecycle.outcomes import OutcomeBuilder
from pipeline.limits.pricing import PriceTable
from pipeline.limits.ratelimit import Limiter
from pipeline.limits.retry import RetryPolicy
from pipeline.ops.metrics import Metrics
from pipeline.partners import Partner, Registry
from pipeline.records import OutMessage, SourceRecord
from pipeline.schemas import Codec
from pipeline.security.signing import SecretResolver, signed_headers
from pipeline.state import BudgetLedger, MemoryStore, ReplayGuard
from pipeline.upstream.claude import UpstreamResult, to_result
from pipeline.upstream.keys import ApiKeys

CODEC = Codec()


class FakeClaude:
    """Answers per prompt from a script of errors, then succeeds."""

    def __init__(self, script: dict[str, list[UpstreamError]] | None = None) -> None:
        self.script = script or {}
        self.calls: list[str] = []
        self.keys: list[str] = []
        self.bodies: list[bytes | None] = []
        self.called = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def create(
        self,
        api_key: str,
        params: Mapping[str, Any],
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResult:
        # Like Claude, it reads the body when there is one (a heavy request's
        # params come back from the examiner without their messages).
        sent = json.loads(body) if body is not None else params
        prompt = sent["messages"][-1]["content"]
        self.calls.append(prompt)
        self.keys.append(api_key)
        self.bodies.append(body)
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        errors = self.script.get(prompt)
        if errors:
            raise errors.pop(0)
        message = {
            "id": "msg_x", "type": "message", "role": "assistant", "model": params["model"],
            "content": [{"type": "text", "text": f"Re: {prompt}"}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 5},
        }  # fmt: skip
        return to_result(message, {"request-id": "req_x"})


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[OutMessage] = []
        self.fail_next = 0
        self.gate: asyncio.Event | None = None

    async def publish(self, messages: list[OutMessage]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("broker unavailable")
        self.published.extend(messages)

    def decoded(self, topic_prefix: str, record: str) -> list[dict[str, Any]]:
        return [
            CODEC.decode(record, m.value)
            for m in self.published
            if m.topic.startswith(topic_prefix)
        ]


def _retriable(status: int = 529, retry_after: float | None = None) -> UpstreamError:
    return UpstreamError("overloaded", error_class="5xx", status=status, retriable=True,
                         retry_after=retry_after)  # fmt: skip


def _rejected() -> UpstreamError:
    return UpstreamError("bad", error_class="4xx", status=400, retriable=False,
                         error_type="invalid_request_error")  # fmt: skip


class Harness:
    def __init__(
        self,
        claude: FakeClaude,
        max_attempts: int = 3,
        flow: Any = None,
        partner: Partner | None = None,
        store: MemoryStore | None = None,
        env: dict[str, str] | None = None,
        examiner: Examiner | None = None,
        **dispatch: Any,
    ) -> None:
        self.registry = Registry()
        self.registry.apply("acme", partner or Partner("acme", "env:S"))
        self.store = store or MemoryStore()
        resolver = SecretResolver({"S": "secret-acme", **(env or {})})
        self.claude = claude
        self.publisher = FakePublisher()
        self.acked: list[int] = []
        self._ack_event = asyncio.Event()
        config = DispatchConfig(publish_attempts=2, **dispatch)
        self.intake = Intake(self.registry, CODEC, resolver, 300.0)
        stages = assemble(
            registry=self.registry,
            intake=self.intake,
            claude=claude,
            keys=ApiKeys(resolver, "sk-default"),
            codec=CODEC,
            builder=OutcomeBuilder(PriceTable(), lambda: 1),
            publisher=self.publisher,
            metrics=Metrics(),
            policy=RetryPolicy(max_attempts, 0.001, 0.01),
            config=config,
            flow=flow,
            # known (huge) limits: no probing one request at a time
            limiter=Limiter(upstream={"requests": 10**6}),
            guard=ReplayGuard(self.store, 300.0),
            ledger=BudgetLedger(self.store),
            rng=lambda: 1.0,
            examiner=examiner,
        )
        self.dispatcher = Dispatcher(stages, config)
        self.offset = 0

    def record(self, prompt: str, request_id: str | None = None, **kw: Any) -> SourceRecord:
        self.offset += 1
        rid = request_id or f"r{self.offset}"
        value = CODEC.encode("ClaudeRequest", build_request("acme", prompt, request_id=rid, **kw))
        headers = signed_headers("acme", b"secret-acme", value)
        return SourceRecord("claude.requests.acme", 0, self.offset, rid.encode(),
                            value, headers)  # fmt: skip

    async def send(self, record: SourceRecord) -> None:
        async def ack(offset: int = record.offset) -> None:
            self.acked.append(offset)
            self._ack_event.set()

        await self.dispatcher.handle(record, ack)

    async def settle(self, acks: int) -> None:
        """Wait (at most 5 s) until `acks` records have been acknowledged."""
        async with asyncio.timeout(5.0):
            while len(self.acked) < acks:
                self._ack_event.clear()
                await self._ack_event.wait()

    def responses(self) -> list[dict[str, Any]]:
        return self.publisher.decoded("claude.responses.", "ClaudeResponse")

    def dead_letters(self) -> list[dict[str, Any]]:
        return self.publisher.decoded("claude.dlq", "DeadLetter")


@pytest.fixture
async def harness() -> Any:
    h = Harness(FakeClaude())
    await h.dispatcher.start()
    yield h
    await h.dispatcher.stop(0)


async def test_success_publishes_response_and_usage_then_acks(harness: Harness) -> None:
    await harness.send(harness.record("hello"))
    await harness.settle(1)
    (response,) = harness.responses()
    assert (response["status"], response["content"], response["attempts"]) == ("ok", "Re: hello", 1)
    (usage,) = harness.publisher.decoded("claude.usage", "UsageRecord")
    assert usage["input_tokens"] == 10
    assert usage["cost_usd"] == pytest.approx((10 * 1 + 5 * 5) / 1e6)
    assert harness.dead_letters() == []
    assert harness.acked == [1]


async def test_retriable_errors_are_retried_then_served() -> None:
    h = Harness(FakeClaude({"flaky": [_retriable(), _retriable(429, 0.01)]}))
    await h.dispatcher.start()
    await h.send(h.record("flaky"))
    await h.settle(1)
    await h.dispatcher.stop(0)
    assert h.claude.calls == ["flaky"] * 3
    assert h.responses()[0]["attempts"] == 3
    assert h.responses()[0]["status"] == "ok"


async def test_exhausted_and_rejected_become_dead_letters() -> None:
    h = Harness(FakeClaude({"down": [_retriable()] * 5, "bad": [_rejected()]}), max_attempts=3)
    await h.dispatcher.start()
    await h.send(h.record("down"))
    await h.send(h.record("bad"))
    await h.settle(2)
    await h.dispatcher.stop(0)
    reasons = {d["request_id"]: (d["reason"], d["attempts"]) for d in h.dead_letters()}
    assert reasons == {"r1": ("upstream_exhausted", 3), "r2": ("upstream_rejected", 1)}
    assert {r["request_id"]: r["error_type"] for r in h.responses()} == {
        "r1": "upstream_exhausted",
        "r2": "upstream_rejected",
    }


async def test_dead_letter_carries_the_original_record(harness: Harness) -> None:
    garbage = b"\x00garbage"
    headers = signed_headers("acme", b"secret-acme", garbage)
    bad = SourceRecord("claude.requests.acme", 3, 99, b"k", garbage, headers)
    await harness.send(bad)
    await harness.settle(1)
    (dead,) = harness.dead_letters()
    assert dead["reason"] == "schema_error"
    assert dead["payload"] == b"\x00garbage"
    assert dead["source_partition"] == 3
    assert dead["source_offset"] == 99
    assert dead["headers"]["x-partner-id"] == b"acme"
    assert dead["source_key"] == b"k"


async def test_redelivery_while_in_flight_yields_one_outcome_and_two_acks() -> None:
    claude = FakeClaude()
    claude.gate = asyncio.Event()
    h = Harness(claude)
    await h.dispatcher.start()
    record = h.record("slow")
    await h.send(record)
    await asyncio.sleep(0.01)
    await h.send(record)  # Kafka redelivers it (e.g. after a rebalance)
    claude.gate.set()
    await h.settle(2)
    await h.send(record)  # and once more after we finished
    await h.settle(3)
    await h.dispatcher.stop(0)
    assert len(h.responses()) == 1
    assert claude.calls == ["slow"]
    assert h.acked == [1, 1, 1]


async def test_no_ack_until_publish_succeeds() -> None:
    h = Harness(FakeClaude())
    h.publisher.fail_next = 1
    await h.dispatcher.start()
    await h.send(h.record("x"))
    await h.settle(1)
    await h.dispatcher.stop(0)
    assert h.acked == [1]
    assert len(h.responses()) == 1


async def test_disabled_while_queued_is_partner_disabled() -> None:
    claude = FakeClaude()
    claude.gate = asyncio.Event()
    h = Harness(claude, max_in_flight=1)
    await h.dispatcher.start()
    await h.send(h.record("first"))
    await h.send(h.record("second"))
    await asyncio.sleep(0.01)
    h.registry.apply("acme", Partner("acme", "env:S", enabled=False))
    claude.gate.set()
    await h.settle(2)
    await h.dispatcher.stop(0)
    assert {d["request_id"]: d["reason"] for d in h.dead_letters()} == {"r2": "partner_disabled"}


async def test_deadline_during_retries_is_deadline_expired() -> None:
    h = Harness(FakeClaude({"late": [_retriable(retry_after=5.0)]}))
    await h.dispatcher.start()
    await h.send(h.record("late", deadline_ms=int(time.time() * 1000) + 1000))
    await h.settle(1)
    await h.dispatcher.stop(0)
    (dead,) = h.dead_letters()
    assert dead["reason"] == "deadline_expired"


async def test_a_partner_flooding_refused_records_is_paused_too() -> None:
    # Before: only queued requests counted, so a partner's forged records, each
    # costing a verification and a dead letter, were fetched without any bound.
    paused: list[str] = []
    resumed: list[str] = []

    class Flow:
        def pause(self, partner_id: str) -> None:
            paused.append(partner_id)

        def resume(self, partner_id: str) -> None:
            resumed.append(partner_id)

    h = Harness(FakeClaude(), flow=Flow(), max_queued_per_partner=4)
    h.publisher.gate = asyncio.Event()  # the broker is slow to take the dead letters
    await h.dispatcher.start()
    for i in range(6):
        record = h.record(f"forged {i}")
        forged = dataclasses.replace(
            record, headers=signed_headers("acme", b"guess", record.value or b"")
        )
        await h.send(forged)
    assert paused == ["acme"]
    h.publisher.gate.set()
    await h.settle(6)
    assert resumed == ["acme"]
    assert [d["reason"] for d in h.dead_letters()] == ["auth_failed"] * 6
    await h.dispatcher.stop(0)


async def test_full_partner_queue_pauses_its_topic() -> None:
    paused: list[str] = []
    resumed: list[str] = []

    class Flow:
        def pause(self, partner_id: str) -> None:
            paused.append(partner_id)

        def resume(self, partner_id: str) -> None:
            resumed.append(partner_id)

    claude = FakeClaude()
    claude.gate = asyncio.Event()
    h = Harness(claude, flow=Flow(), max_in_flight=1, max_queued_per_partner=4)
    await h.dispatcher.start()
    for i in range(6):
        await h.send(h.record(f"m{i}"))
    assert paused == ["acme"]
    claude.gate.set()
    await h.settle(6)
    await h.dispatcher.stop(0)
    assert resumed == ["acme"]


async def test_a_later_copy_of_a_request_id_leaves_only_an_audit_entry(harness: Harness) -> None:
    # Before: the copy got an error response (auth_failed), which a partner that
    # keeps the first response per request_id could read before the real one.
    await harness.send(harness.record("once", request_id="same"))
    await harness.settle(1)
    await harness.send(harness.record("once", request_id="same"))  # a new record, same id
    await harness.settle(2)
    (dead,) = harness.dead_letters()
    assert dead["reason"] == "duplicate"
    assert "a later copy of request_id 'same'" in dead["detail"]
    assert [r["status"] for r in harness.responses()] == ["ok"]  # one response, the original's
    assert len(harness.publisher.decoded("claude.usage", "UsageRecord")) == 1
    assert harness.claude.calls == ["once"]


async def test_a_copy_arriving_while_the_original_is_in_flight_is_a_duplicate_too() -> None:
    claude = FakeClaude()
    claude.gate = asyncio.Event()
    h = Harness(claude)
    await h.dispatcher.start()
    await h.send(h.record("slow", request_id="twin"))
    await h.send(h.record("slow", request_id="twin"))
    await h.settle(1)  # the copy's audit entry
    claude.gate.set()
    await h.settle(2)
    await h.dispatcher.stop(0)
    assert [d["reason"] for d in h.dead_letters()] == ["duplicate"]
    assert [r["status"] for r in h.responses()] == ["ok"]
    assert claude.calls == ["slow"]


async def test_a_redelivery_after_a_restart_is_not_served_twice() -> None:
    first = Harness(FakeClaude())
    await first.dispatcher.start()
    record = first.record("before the crash")
    await first.send(record)
    await first.settle(1)
    await first.dispatcher.stop(0)
    # a new worker recovers the same state; Kafka redelivers the uncommitted record
    second = Harness(FakeClaude(), store=first.store)
    await second.dispatcher.start()
    await second.send(record)
    await second.settle(1)
    await second.dispatcher.stop(0)
    assert second.claude.calls == []
    assert second.responses() == []
    assert second.dead_letters() == []


async def test_a_budget_is_never_overrun_by_concurrent_requests() -> None:
    # worst case of one request: (3 + 3 + 4 + 4 bytes of "b NN" ... ) at Haiku prices;
    # the budget fits exactly 50 of them
    probe = Harness(FakeClaude())
    admitted = probe.intake.admit(probe.record("b 00", max_tokens=100))
    job_tokens, budget = admitted.worst_tokens, admitted.worst_usd * 50
    claude = FakeClaude()
    claude.gate = asyncio.Event()
    partner = Partner("acme", "env:S", monthly_budget_usd=budget)
    h = Harness(claude, partner=partner, max_in_flight=256)
    await h.dispatcher.start()
    for i in range(200):
        await h.send(h.record(f"b {i:02d}"[:4], max_tokens=100))
    await asyncio.sleep(0.05)
    assert len(claude.calls) == 50  # the worst case of 50 is all the budget holds
    claude.gate.set()
    await h.settle(200)
    await h.dispatcher.stop(0)
    usage = h.publisher.decoded("claude.usage", "UsageRecord")
    spent = sum(u["cost_usd"] for u in usage)
    assert spent <= budget
    served = [u for u in usage if u["status"] == "ok"]
    refused = [d for d in h.dead_letters() if d["reason"] == "quota_exceeded"]
    # real usage is far below the worst case, so more than 50 fit in the end
    assert len(served) > 50
    assert len(served) + len(refused) == 200
    assert job_tokens > 100


async def test_the_served_line_says_where_the_time_went(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    import dataclasses
    import time

    produced_ms = int(time.time() * 1000) - 250  # the record waited 250 ms before intake
    record = dataclasses.replace(harness.record("hello"), timestamp_ms=produced_ms)
    with caplog.at_level("INFO", logger="pipeline.lifecycle.completion"):
        await harness.send(record)
        await harness.settle(1)
    (served,) = [r for r in caplog.records if r.getMessage() == "served"]
    fields = served.__dict__
    assert 250 <= fields["intake_lag_ms"] < 5_000
    assert 0 <= fields["queued_ms"] < 5_000
    assert 0 <= fields["upstream_ms"] < 5_000
    assert "kafka_ms" not in fields  # the record does not say when it reached us


async def test_the_served_line_splits_the_intake_where_the_record_was_stamped(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    # Both clocks read together, after the record is built: reading the wall
    # clock later let the time harness.record took (9 ms once, under load)
    # shorten the Kafka share.
    plain = harness.record("hello")
    now, wall = time.monotonic(), time.time()
    record = dataclasses.replace(
        plain,
        timestamp_ms=int(wall * 1000) - 300,  # produced 300 ms ago,
        fetched_mono=now - 0.1,  # handed to the event loop 200 ms later,
        arrived_mono=now - 0.04,  # our handler had it 60 ms after that
    )
    with caplog.at_level("INFO", logger="pipeline.lifecycle.completion"):
        await harness.send(record)
        await harness.settle(1)
    (served,) = [r for r in caplog.records if r.getMessage() == "served"]
    fields = served.__dict__
    assert 195 <= fields["kafka_ms"] <= 210
    assert 59 <= fields["stream_ms"] <= 61
    assert 40 <= fields["admit_ms"] < 1_000
    split = fields["kafka_ms"] + fields["stream_ms"] + fields["admit_ms"]
    assert abs(fields["intake_lag_ms"] - split) <= 2


async def test_a_retry_whose_partition_was_revoked_during_its_backoff_is_not_sent() -> None:
    # Before: the retry went to Claude after its backoff although the partition's
    # new owner re-reads the record and calls Claude too.
    claude = FakeClaude({"hello": [_retriable(retry_after=0.2)]})
    h = Harness(claude)
    await h.dispatcher.start()
    await h.send(h.record("hello"))
    async with asyncio.timeout(5):
        await claude.called.wait()
    h.dispatcher.on_partitions_revoked([("claude.requests.acme", 0)])
    await asyncio.sleep(0.5)  # past the backoff the first attempt asked for
    await h.dispatcher.stop(0)
    assert claude.calls == ["hello"]  # one call: the new owner makes the next one
    assert h.acked == []  # not acked: the new owner serves it
    assert h.responses() == []


async def test_a_revoke_waits_for_calls_under_way_on_its_partitions_to_publish() -> None:
    # Before: the worker let go of the partition at once; the call under way
    # published after its next owner had re-read the record and called Claude too.
    claude = FakeClaude()
    claude.gate = asyncio.Event()
    h = Harness(claude)
    await h.dispatcher.start()
    await h.send(h.record("slow"))
    async with asyncio.timeout(5):
        await claude.called.wait()
    revoked = [("claude.requests.acme", 0)]
    h.dispatcher.on_partitions_revoked(revoked)
    assert await h.dispatcher.finish_revoked(revoked, 0.05) == 1  # still running
    assert await h.dispatcher.finish_revoked([("claude.requests.other", 0)], 5) == 0
    waiting = asyncio.ensure_future(h.dispatcher.finish_revoked(revoked, 5))
    await asyncio.sleep(0)
    assert not waiting.done()
    claude.gate.set()
    assert await waiting == 0
    assert len(h.responses()) == 1  # published before the revoke returned
    assert h.store.data["acme|r1"]["s"] == "done"  # and marked served
    await h.dispatcher.stop(0)


async def test_a_rotated_key_serves_new_requests_while_started_ones_finish_on_the_old() -> None:
    keys = {"KEY_OLD": "sk-old-key", "KEY_NEW": "sk-new-key"}
    old = Partner("acme", "env:S", api_key_ref="env:KEY_OLD")
    claude = FakeClaude({"retried": [_retriable(retry_after=0.05)]})
    claude.gate = asyncio.Event()
    h = Harness(claude, partner=old, env=keys)
    await h.dispatcher.start()
    await h.send(h.record("in flight"))
    await h.send(h.record("retried"))
    async with asyncio.timeout(5):
        while len(claude.calls) < 2:
            claude.called.clear()
            await claude.called.wait()
    rotated = old.with_(
        api_key_ref="env:KEY_NEW",
        previous_api_key_ref="env:KEY_OLD",
        previous_api_key_expires_at_ms=int(time.time() * 1000) + 60_000,
    )
    h.registry.apply("acme", rotated)
    h.dispatcher.on_partner_changed("acme")
    await h.send(h.record("after the rotation"))
    claude.gate.set()
    await h.settle(3)
    await h.dispatcher.stop(0)
    used = dict(zip(claude.calls, claude.keys, strict=False))
    by_prompt = {p: [k for c, k in zip(claude.calls, claude.keys, strict=True) if c == p]
                 for p in used}  # fmt: skip
    assert by_prompt["in flight"] == ["sk-old-key"]  # the call in flight finished on the old key
    assert by_prompt["retried"] == ["sk-old-key", "sk-old-key"]  # its retry too, within grace
    assert by_prompt["after the rotation"] == ["sk-new-key"]  # new requests: the new key at once


async def test_stopping_as_a_record_arrives_stops_the_dispatch_loop() -> None:
    # Before: the loop waited for its wake-up with `asyncio.wait_for`, which on
    # Python 3.11 swallows a cancellation that lands as the event is set; the loop
    # kept running and a SIGTERMed worker never exited (chaos --quick, 1 run in 5).
    h = Harness(FakeClaude())
    await h.dispatcher.start()
    await asyncio.sleep(0.01)  # the loop is waiting for work
    await h.send(h.record("hello"))  # sets the wake-up; the loop has not run yet
    async with asyncio.timeout(2):
        await h.dispatcher.stop(0)
    assert len(h.dispatcher._loops) == 0  # every loop ended, none left behind
