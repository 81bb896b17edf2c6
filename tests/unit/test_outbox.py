"""The state log's writer: in order, and on Kafka one transaction per batch."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from pipeline.config import Settings
from pipeline.errors import BrokerError
from pipeline.kafka.outbox import Outbox
from pipeline.kafka.producer import AsyncProducer
from pipeline.records import OutMessage


class Producer:
    """Records what the producer (`AsyncProducer`) was asked to do; fails where told."""

    def __init__(self, fail_send_of: bytes | None = None, abort_fails: bool = False) -> None:
        self.calls: list[Any] = []
        self.fail_send_of = fail_send_of
        self.abort_fails = abort_fails
        self.held: list[asyncio.Future[None]] = []  # acks the broker has not answered
        self.failing = False
        self.holding = asyncio.Event()

    async def begin_transaction(self) -> None:
        self.calls.append("begin")

    async def commit_transaction(self) -> None:
        self.calls.append("commit")
        if self.failing:  # librdkafka's commit flushes, and fails for an undelivered record
            raise RuntimeError("not leader")

    async def abort_transaction(self) -> None:
        self.calls.append("abort")
        if self.abort_fails:
            raise RuntimeError("fenced")

    def produce(self, topic: str, value: Any, key: bytes, partition: Any, headers: Any) -> None:
        self.calls.append((topic, key))
        self.failing |= key == self.fail_send_of

    def send_nowait(self, topic: str, **kw: Any) -> asyncio.Future[None]:
        self.calls.append((topic, kw["key"]))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if kw["key"] == self.fail_send_of:
            ack.set_exception(RuntimeError("not leader"))
        elif kw["key"].startswith(b"slow"):
            self.held.append(ack)
            self.holding.set()
        else:
            ack.set_result(None)
        return ack


def _write(key: bytes) -> tuple[str, bytes, bytes, None, list[tuple[str, bytes]], Any]:
    return (
        "claude.pipeline.state",
        key,
        b"{}",
        None,
        [],
        asyncio.get_running_loop().create_future(),
    )


async def _drain(outbox: Outbox, producer: Producer) -> None:
    task = asyncio.create_task(outbox.run(producer))
    await outbox.join()
    task.cancel()


def test_a_response_and_its_marker_are_one_transaction() -> None:
    async def go() -> list[Any]:
        outbox, producer = Outbox(transactional=True), Producer()
        with outbox.together():
            sent = outbox.send([OutMessage("claude.responses.acme", b"r1", b"v")])
            marker = _write(b"served/acme|r1")
            outbox.put(marker)
        await _drain(outbox, producer)
        await asyncio.gather(*sent, marker[5])
        return producer.calls

    assert asyncio.run(go()) == [
        "begin", ("claude.responses.acme", b"r1"), ("claude.pipeline.state", b"served/acme|r1"),
        "commit",
    ]  # fmt: skip


def test_what_queued_meanwhile_shares_one_commit() -> None:
    async def go() -> list[Any]:
        outbox, producer = Outbox(transactional=True), Producer()
        writes = [_write(f"k{i}".encode()) for i in range(3)]
        for write in writes:
            outbox.put(write)
        await _drain(outbox, producer)
        return producer.calls

    calls = asyncio.run(go())
    assert calls.count("begin") == calls.count("commit") == 1
    assert [c[1] for c in calls if isinstance(c, tuple)] == [b"k0", b"k1", b"k2"]  # in order


def test_a_failed_transaction_is_aborted_and_fails_every_write_in_it() -> None:
    async def go() -> tuple[list[Any], list[BaseException | None]]:
        outbox, producer = Outbox(transactional=True), Producer(fail_send_of=b"r1")
        with outbox.together():
            (response,) = outbox.send([OutMessage("claude.responses.acme", b"r1", b"v")])
            marker = _write(b"served/acme|r1")
            outbox.put(marker)
        await _drain(outbox, producer)
        return producer.calls, [response.exception(), marker[5].exception()]

    calls, errors = asyncio.run(go())
    assert calls[-2:] == ["commit", "abort"]
    assert all(isinstance(e, RuntimeError) for e in errors)  # the marker too: retried together


def test_without_transactions_each_write_is_sent_and_acknowledged_alone() -> None:
    async def go() -> list[Any]:
        outbox, producer = Outbox(transactional=False), Producer(fail_send_of=b"bad")
        good, bad = _write(b"good"), _write(b"bad")
        outbox.put(good)
        outbox.put(bad)
        await _drain(outbox, producer)
        await asyncio.sleep(0)
        assert good[5].result() is None
        with pytest.raises(RuntimeError):
            bad[5].result()
        return producer.calls

    assert asyncio.run(go()) == [
        ("claude.pipeline.state", b"good"),
        ("claude.pipeline.state", b"bad"),
    ]


class Librdkafka:
    """Stands in for confluent-kafka's Producer under `AsyncProducer`: records the
    calls, and fails the commit as librdkafka does when a record failed."""

    def __init__(self, owner: AsyncProducer) -> None:
        self.owner = owner
        self.calls: list[str] = []

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def produce(self, topic: str, **kw: Any) -> None:
        self.calls.append("produce")
        message = SimpleNamespace(topic=lambda: topic)
        if kw["key"] == b"purged":  # librdkafka may report these before the cause
            self.owner._failed(KafkaError(KafkaError._PURGE_QUEUE), message)  # type: ignore[arg-type]
        if kw["key"] == b"too-large":
            error = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
            self.owner._failed(error, message)  # type: ignore[arg-type]

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")
        raise KafkaException(KafkaError(KafkaError._INCONSISTENT, "1 message(s) failed delivery"))

    def flush(self, timeout: float) -> int:
        self.calls.append("flush")
        return 0

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")


def test_a_failed_record_is_named_by_the_commit_and_answered_before_the_abort() -> None:
    # librdkafka reports only failed records of a transaction; an abort with
    # records still in flight left the next transaction's records to time
    # out, and that abort hung: the producer flushes before it aborts
    async def go() -> tuple[list[str], list[BaseException | None]]:
        producer = AsyncProducer(Settings.from_env({}), transactional_id="t")
        fake = Librdkafka(producer)
        producer._producer, producer._loop = fake, asyncio.get_running_loop()  # type: ignore[assignment]
        outbox = Outbox(transactional=True)
        writes = [_write(b"fine"), _write(b"purged"), _write(b"too-large")]
        with outbox.together():
            for write in writes:
                outbox.put(write)
        await _drain(outbox, producer)  # type: ignore[arg-type]
        return fake.calls, [w[5].exception() for w in writes]

    calls, errors = asyncio.run(go())
    assert calls == ["begin", "produce", "produce", "produce", "commit", "flush", "abort"]
    assert all(isinstance(e, BrokerError) for e in errors)
    assert "not delivered to claude.pipeline.state: Broker: Message size too large" in str(
        errors[0]
    )


def test_a_transactional_producer_has_no_per_record_reports() -> None:
    producer = AsyncProducer(Settings.from_env({}), transactional_id="t")
    assert producer._conf["delivery.report.only.error"] is True


def test_a_transaction_that_cannot_be_aborted_stops_the_writer_saying_why() -> None:
    async def go() -> None:
        outbox, write = Outbox(transactional=True), _write(b"r1")
        outbox.put(write)
        try:
            await outbox.run(Producer(fail_send_of=b"r1", abort_fails=True))
        finally:
            assert isinstance(write[5].exception(), RuntimeError)  # its caller is told

    with pytest.raises(BrokerError, match="cannot abort a failed state log transaction"):
        asyncio.run(go())
