"""The worker's producer's transaction calls (pipeline/kafka/producer.py), on a
stand-in for librdkafka's producer: what each failure of a commit leads to."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from pipeline.config import Settings
from pipeline.errors import BrokerError
from pipeline.kafka.producer import COMMIT_ATTEMPTS, AsyncProducer


class Librdkafka:
    """Fails `commit_transaction` with each of `failures` in turn, then commits."""

    def __init__(self, failures: list[KafkaError]) -> None:
        self.failures = failures
        self.calls: list[str] = []

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")
        if self.failures:
            raise KafkaException(self.failures.pop(0))


def _commit(failures: list[KafkaError]) -> tuple[list[str], BaseException | None]:
    async def go() -> tuple[list[str], BaseException | None]:
        producer, fake = AsyncProducer(Settings()), Librdkafka(failures)
        producer._producer, producer._loop = fake, asyncio.get_running_loop()  # type: ignore[assignment]
        try:
            await producer.commit_transaction()
        except KafkaException as exc:
            return fake.calls, exc
        return fake.calls, None

    return asyncio.run(go())


def _timed_out() -> KafkaError:
    return KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True)


def test_a_commit_that_timed_out_is_resumed_not_aborted() -> None:
    # librdkafka refuses an abort while a commit is under way (_CONFLICT): the
    # worker used to stop there
    calls, error = _commit([_timed_out()])
    assert calls == ["commit", "commit"]
    assert error is None


def test_a_commit_that_keeps_timing_out_gives_up() -> None:
    calls, error = _commit([_timed_out() for _ in range(COMMIT_ATTEMPTS)])
    assert len(calls) == COMMIT_ATTEMPTS
    assert error is not None


@pytest.mark.parametrize("code", [KafkaError._FENCED, KafkaError.INVALID_TXN_STATE])
def test_a_commit_that_cannot_be_retried_raises_at_once(code: Any) -> None:
    calls, error = _commit([KafkaError(code, "no", txn_requires_abort=True)])
    assert calls == ["commit"]
    assert error is not None


def test_a_commit_that_timed_out_after_a_record_failed_is_resumed_then_names_it() -> None:
    # a record failed while the commit's flush was still waiting on others: the
    # commit is still under way in librdkafka, so raising then (and aborting)
    # would be refused as conflicting and stop the writer
    async def go() -> tuple[list[str], BaseException | None]:
        producer = AsyncProducer(Settings(), transactional_id="t")
        fake = Librdkafka(
            [_timed_out(), KafkaError(KafkaError._INCONSISTENT, "1 message(s) failed delivery")]
        )
        producer._producer, producer._loop = fake, asyncio.get_running_loop()  # type: ignore[assignment]
        producer._failures.append(("claude.responses.acme", "Local: Message timed out"))
        try:
            await producer.commit_transaction()
        except BrokerError as exc:
            return fake.calls, exc
        return fake.calls, None

    calls, error = asyncio.run(go())
    assert calls == ["commit", "commit"]
    assert "not delivered to claude.responses.acme: Local: Message timed out" in str(error)
