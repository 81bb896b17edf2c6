"""The worker's producer on librdkafka, awaited from the event loop.

librdkafka batches, compresses and sends in its own threads. One thread of ours
serves its delivery reports (`poll`, blocking: nothing spins while idle); each
report settles its record's asyncio future, and the reports that arrive together
reach the event loop in one call, not one each.

`send_nowait` and the transaction calls have the shape of aiokafka's producer,
which the state log's outbox (`pipeline.kafka.outbox`) drives; `publish` is the
dispatcher's `Publisher`. The transaction calls that wait on the broker (init,
commit, abort) run in a worker thread, off the event loop.

A transactional producer keeps no future per record: `produce` queues a record,
and `commit_transaction` (librdkafka flushes the transaction's records first)
fails if any of them was not delivered, naming the first failure. Only failed
records reach our callback (`delivery.report.only.error`: confluent-kafka
still looks at each report, in C), so a transaction of many records costs no
future, partial, Python call or loop wake-up per record.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from pipeline.config import Settings
from pipeline.errors import BrokerError
from pipeline.factory import client_config
from pipeline.records import OutMessage

log = logging.getLogger("pipeline.kafka.producer")

Headers = list[tuple[str, bytes]]

#: How long a record may take to be delivered, retries included.
DELIVERY_TIMEOUT_MS = 30_000
#: How long the delivery thread blocks in librdkafka while nothing is delivered.
IDLE_WAIT_S = 1.0
#: The longest a commit or an abort of a transaction may wait on the broker.
TRANSACTION_CALL_S = 30.0
#: How many times a commit that timed out is resumed before the worker gives up.
COMMIT_ATTEMPTS = 3


def producer_config(settings: Settings, transactional_id: str | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {
        **client_config(settings),
        "acks": "all",
        "linger.ms": 1,
        "message.max.bytes": settings.max_message_bytes,
        "enable.idempotence": settings.broker_profile.idempotent_producers
        or transactional_id is not None,
        # Kafka's default partitioner (the Java client's): keys land where any
        # other client, and the worker's placement check, expects them
        "partitioner": "murmur2_random",
        "topic.metadata.refresh.interval.ms": 30_000,
        # a record not delivered within this fails (librdkafka: 5 minutes), and
        # its request is not acked: its next reader serves it again
        "message.timeout.ms": DELIVERY_TIMEOUT_MS,
    }
    if transactional_id is not None:
        conf["transactional.id"] = transactional_id
    return conf


class AsyncProducer:
    """A confluent-kafka producer whose sends are asyncio futures."""

    def __init__(
        self,
        settings: Settings,
        transactional_id: str | None = None,
        transaction_timeout_ms: int | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        conf = producer_config(settings, transactional_id)
        if transaction_timeout_ms is not None:
            # librdkafka refuses a record that may outlive its transaction
            conf["transaction.timeout.ms"] = transaction_timeout_ms
            conf["message.timeout.ms"] = transaction_timeout_ms
        if transactional_id is not None:
            conf["delivery.report.only.error"] = True
            conf["on_delivery"] = self._failed
        conf.update(overrides or {})
        conf["error_cb"] = self._error
        self._conf = conf
        self._transactional = transactional_id is not None
        self._producer: Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._reports: list[tuple[asyncio.Future[None], KafkaError | None]] = []
        #: The current transaction's records that were not delivered: (topic, why),
        #: the records librdkafka purged because another failed last.
        self._failures: list[tuple[str, str]] = []
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._producer = producer = Producer(self._conf)
        if self._transactional:
            await asyncio.to_thread(producer.init_transactions, 30.0)
        self._thread = threading.Thread(
            target=self._serve, args=(producer,), name="producer-reports", daemon=True
        )
        self._thread.start()

    async def stop(self, timeout_s: float = 10.0) -> None:
        producer = self._producer
        if producer is None:
            return
        left = await asyncio.to_thread(producer.flush, timeout_s)
        if left:
            log.warning("records not delivered before stopping", extra={"count": left})
        self._closing.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        self._producer = None

    # -- sending ------------------------------------------------------------------

    def send_nowait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[None]:
        """Queue a record; the future is its delivery report (not on a
        transactional producer: see `produce`)."""
        loop = self._started()[1]
        if self._transactional:
            raise BrokerError("a transactional producer reports through its commit: use produce")
        done: asyncio.Future[None] = loop.create_future()
        try:
            self.produce(
                topic, value, key, partition, headers, functools.partial(self._delivered, done)
            )
        except BrokerError as exc:
            done.set_exception(exc)
        return done

    async def publish(self, messages: list[OutMessage]) -> None:
        """Send and wait for every delivery; raises the first failure."""
        futures = [
            self.send_nowait(m.topic, m.value, m.key, None, list(m.headers)) for m in messages
        ]
        await asyncio.gather(*futures)

    # -- transactions -----------------------------------------------------------

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int | None,
        headers: Headers | None,
        report: Any = None,
    ) -> None:
        """Queue a record: `report` is called with its delivery report, or (on a
        transactional producer) `commit_transaction` says if it was not
        delivered. Raises BrokerError when it cannot even be queued."""
        producer = self._started()[0]
        where: dict[str, Any] = {} if partition is None else {"partition": partition}
        if report is not None:
            where["on_delivery"] = report
        try:
            producer.produce(
                topic, value=value, key=key, headers=cast(Any, headers or None), **where
            )
        except BufferError as exc:
            raise BrokerError("the producer's queue is full") from exc
        except KafkaException as exc:
            raise BrokerError(f"cannot produce to {topic}: {exc.args[0].str()}") from exc

    async def begin_transaction(self) -> None:
        with self._lock:
            self._failures.clear()
        self._started()[0].begin_transaction()

    async def commit_transaction(self) -> None:
        """A commit that times out is still under way in librdkafka: it is called
        again (an abort now would be refused as conflicting), up to
        `COMMIT_ATTEMPTS` times; any other failure raises."""
        producer = self._started()[0]
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                await asyncio.to_thread(producer.commit_transaction, TRANSACTION_CALL_S)
            except KafkaException as exc:
                error = exc.args[0]
                if attempt < COMMIT_ATTEMPTS and error.retriable():
                    # still under way in librdkafka (a record failed meanwhile or
                    # not): resumed, since an abort now would be refused as
                    # conflicting; its end says whether it can commit
                    log.warning("transaction commit: retrying", extra={"error": error.str()})
                    continue
                with self._lock:
                    failed = self._failures[:1]
                if failed:  # librdkafka only says that some record failed: say which, why
                    topic, why = failed[0]
                    raise BrokerError(f"not delivered to {topic}: {why}") from exc
                raise
            else:
                return

    async def abort_transaction(self) -> None:
        """Every record of the transaction answered first (an abort with records
        still in flight left the next transaction's records to time out, and its
        abort hung), then the abort. Raises if the abort cannot be made in
        `TRANSACTION_CALL_S` (the caller stops: never a writer waiting on the
        broker forever)."""
        producer = self._started()[0]
        await asyncio.to_thread(producer.flush, TRANSACTION_CALL_S)
        await asyncio.to_thread(producer.abort_transaction, TRANSACTION_CALL_S)

    # -- delivery reports -------------------------------------------------------

    def _started(self) -> tuple[Producer, asyncio.AbstractEventLoop]:
        if self._producer is None or self._loop is None:
            raise BrokerError("the producer is not started")
        return self._producer, self._loop

    def _serve(self, producer: Producer) -> None:
        while not self._closing.is_set():
            try:
                producer.poll(IDLE_WAIT_S)
            except Exception as exc:  # the reports must keep coming: say it, go on
                log.warning("serving delivery reports failed", exc_info=exc)

    def _delivered(self, done: asyncio.Future[None], err: KafkaError | None, msg: Message) -> None:
        """A delivery report (in whichever thread served it): collected, and handed
        to the event loop with the others that came with it."""
        with self._lock:
            first = not self._reports
            self._reports.append((done, err))
        if first and self._loop is not None:
            self._loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        with self._lock:
            reports, self._reports = self._reports, []
        for done, err in reports:
            if done.done():
                continue
            if err is None:
                done.set_result(None)
            else:
                done.set_exception(BrokerError(f"not delivered: {err.str()}"))

    def _failed(self, err: KafkaError | None, msg: Message) -> None:
        """A transactional record was not delivered (the only reports asked for)."""
        if err is None:
            return
        failure = (str(msg.topic()), err.str())
        purged = err.code() in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)
        with self._lock:
            if purged:
                self._failures.append(failure)
            else:
                self._failures.insert(0, failure)  # the cause, not its consequences
            del self._failures[16:]

    def _error(self, err: KafkaError) -> None:
        log.warning("producer: %s", err.str(), extra={"code": err.name(), "fatal": err.fatal()})
