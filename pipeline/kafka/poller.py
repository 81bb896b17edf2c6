"""The consumer thread: librdkafka's consumer, polled, called and called back in one thread.

One thread blocks in `poll()` and makes every call on the consumer: the event
loop asks for calls (`do`), and the thread makes them between two polls. Never
from the event loop: a call that waits inside librdkafka holding the GIL, while
this thread waits for the loop inside a rebalance callback, deadlocks (seen here
with `subscribe` and with an asynchronous `commit`).

It subscribes once, by pattern (every request topic), and never again:
confluent-kafka aborted the process (`CallState_get: Assertion cs != NULL`) when
a subscription changed while a rebalance was under way, a partner added while
another's rebalance ran. A new partner's topic is picked up by reading the
cluster's topics (`refresh`), which starts the rebalance onto it.

What arrives goes to the loop in one call per batch, and the rebalance callbacks
run their loop side (`Intake`) there and wait for it: a revoke lets the worker
finish the partitions' calls under way, then commits what is done, then lets them go.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from pipeline.config import Settings
from pipeline.factory import client_config
from pipeline.kafka.offsets import TP
from pipeline.partners import REQUESTS_PREFIX

log = logging.getLogger("pipeline.kafka.poller")

_T = TypeVar("_T")

#: Records taken from librdkafka's queue per hand-over to the event loop.
BATCH = 500
#: How long the thread blocks in librdkafka while nothing arrives (a record ends
#: the wait at once; a call asked for by the loop waits for the next turn).
IDLE_WAIT_S = 0.1


class Intake(Protocol):
    """The consumer's event-loop side (`pipeline.kafka.consumer.RequestConsumer`)."""

    async def arrived(self, messages: list[Message], fetched: float) -> None: ...

    async def assigned(self, tps: set[TP]) -> None: ...

    async def revoking(self, tps: set[TP]) -> dict[TP, int]: ...

    async def forget(self, tps: set[TP]) -> None: ...

    def uncommit(self, positions: dict[TP, int]) -> None: ...

    def failed(self, exc: BaseException) -> None: ...


class Poller:
    def __init__(
        self, settings: Settings, config: dict[str, Any], intake: Intake, pattern: str
    ) -> None:
        self._settings = settings
        self._config = config
        self._intake = intake
        self._pattern = pattern
        self.counts: dict[str, int] = {}  # partitions per request topic, from the metadata
        self.members = 1  # group members, after the last rebalance
        self._admin: Any = None  # for the metadata and the group's size, at a rebalance
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._joined = False  # an assignment came (set in the consumer thread)
        self._leave_by = 0.0  # with a join under way, the latest the thread leaves
        self._commands: deque[Callable[[Consumer], object]] = deque()
        self._stopped: asyncio.Future[None] | None = None

    # -- from the event loop ----------------------------------------------------

    def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        consumer = Consumer({**self._config, "error_cb": self._error, "on_commit": self._committed})
        self.do(self._subscribe)
        self._thread = threading.Thread(
            target=self._run, args=(consumer, loop), name="request-consumer", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        """The thread leaves the group (the revoke callback runs) and closes the consumer."""
        if self._stopped is None:
            return
        if self._settings.broker_profile.finish_join_before_leaving:
            grace = 2 * self._settings.timings.session_timeout_s
            self._leave_by = time.monotonic() + grace
        self._closing.set()
        await self._stopped

    def do(self, command: Callable[[Consumer], object]) -> None:
        """Have the consumer thread make this call, between two polls."""
        self._commands.append(command)

    def refresh(self) -> None:
        """Read the cluster's topics now: a new one the pattern matches is consumed
        after the rebalance this starts (not at the next periodic refresh)."""
        self.do(lambda consumer: consumer.list_topics(timeout=10))

    def pause(self, tps: Iterable[TP]) -> None:
        parts = _parts(tps)
        if parts:
            self.do(lambda consumer: consumer.pause(parts))

    def resume(self, tps: Iterable[TP]) -> None:
        parts = _parts(tps)
        if parts:
            self.do(lambda consumer: consumer.resume(parts))

    def commit(self, positions: dict[TP, int]) -> None:
        """Commit asynchronously (a failure is reported to `on_commit`)."""
        self.do(lambda consumer: self._commit(consumer, positions))

    # -- in the consumer thread -------------------------------------------------

    def _run(self, consumer: Consumer, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while not self._leaving():
                while self._commands:
                    _call(consumer, self._commands.popleft())
                first = consumer.poll(IDLE_WAIT_S)
                if first is None:
                    continue
                batch = [first, *consumer.consume(BATCH - 1, 0)]
                self._on_loop(self._intake.arrived(batch, time.monotonic()))
        except Exception as exc:  # librdkafka gave up: the worker stops, saying why
            loop.call_soon_threadsafe(self._intake.failed, exc)
        finally:
            while self._commands:  # a last commit asked for on the way out
                _call(consumer, self._commands.popleft())
            try:
                consumer.close()  # revokes everything owned: the callback runs first
            except Exception as exc:
                log.warning("closing the request consumer failed", exc_info=exc)
            loop.call_soon_threadsafe(_settle, self._stopped)

    def _leaving(self) -> bool:
        """Stop was asked for, and no group join is left under way (see
        `BrokerProfile.finish_join_before_leaving`)."""
        if not self._closing.is_set():
            return False
        return self._joined or time.monotonic() >= self._leave_by

    def _on_loop(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run `coro` on the event loop and wait for it here."""
        if self._loop is None:
            raise RuntimeError("the request consumer is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _subscribe(self, consumer: Consumer) -> None:
        consumer.subscribe(
            [self._pattern], on_assign=self._assign, on_revoke=self._revoke, on_lost=self._lose
        )

    def _commit(self, consumer: Consumer, positions: dict[TP, int]) -> None:
        # asked for before a rebalance that has since let some partitions go (and
        # committed them itself): never commit those again, older, for their new owner
        owned = {(p.topic, p.partition) for p in consumer.assignment()}
        positions = {tp: offset for tp, offset in positions.items() if tp in owned}
        if not positions:
            return
        try:
            consumer.commit(offsets=_tps(positions), asynchronous=True)
        except KafkaException as exc:
            log.warning("offset commit failed: retried", exc_info=exc)
            self._call_soon(self._intake.uncommit, positions)

    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._joined = True
        consumer.assign(partitions)
        try:
            # Not the consumer's own list_topics: inside a callback of poll() it
            # ends the poll's call state, and the next callback of that poll
            # aborts the process (confluent-kafka's `CallState_get` assertion).
            meta = self._admin_client().list_topics(timeout=10)
            self.counts = {
                name: len(t.partitions)
                for name, t in meta.topics.items()
                if name.startswith(REQUESTS_PREFIX) and t.error is None
            }
        except Exception as exc:  # slow or gone: the last counts stand, the worker goes on
            log.warning("cannot read the request topics' partition counts", exc_info=exc)
        self.members = self._group_size(partitions)
        self._on_loop(self._intake.assigned({(p.topic, p.partition) for p in partitions}))

    def _group_size(self, partitions: list[TopicPartition]) -> int:
        """Members of the group now (each worker plans with 1/N of an upstream key):
        as the broker describes the group, else (Tansu describes no members) as
        the round-robin assignment implies."""
        group = self._settings.group_id
        try:
            admin = self._admin_client()
            described = admin.describe_consumer_groups([group])[group].result(timeout=10)
            if described.members:
                return len(described.members)
        except Exception as exc:  # a coordinator slow to answer (a TimeoutError) too
            log.info("the broker does not describe the group", extra={"error": repr(exc)})
        mine = {(p.topic, p.partition) for p in partitions}
        return roundrobin_members(self.counts, mine) or self.members

    def _admin_client(self) -> Any:
        """A client of its own for the metadata and the group (made on first use)."""
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient(client_config(self._settings))
        return self._admin

    def _revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._let_go(consumer, partitions, commit=True)

    def _lose(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions lost without a revoke (the session expired): nothing may be
        committed for them any more; their next owner serves what was not done."""
        log.warning(
            "partitions lost: the group moved on without us", extra={"lost": len(partitions)}
        )
        self._let_go(consumer, partitions, commit=False)

    def _let_go(self, consumer: Consumer, partitions: list[TopicPartition], commit: bool) -> None:
        """The worker finishes the partitions' calls under way; what is done is
        committed (`commit`), and the partitions are let go."""
        tps = {(p.topic, p.partition) for p in partitions}
        positions = self._on_loop(self._intake.revoking(tps))
        if commit and positions:
            try:
                consumer.commit(offsets=_tps(positions), asynchronous=False)
            except KafkaException as exc:
                log.warning("commit of revoked partitions failed", exc_info=exc)
        self._on_loop(self._intake.forget(tps))
        consumer.unassign()

    def _error(self, err: KafkaError) -> None:
        """librdkafka's error callback: transient errors are retried by librdkafka and
        logged here; a fatal one stops the worker."""
        if err.fatal():
            self._call_soon(self._intake.failed, KafkaException(err))
            return
        log.warning("request consumer: %s", err.str(), extra={"code": err.name()})

    def _committed(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            log.warning("offset commit failed: retried", extra={"error": err.str()})
            failed = {(p.topic, p.partition): p.offset for p in partitions}
            self._call_soon(self._intake.uncommit, failed)

    def _call_soon(self, fn: Callable[[Any], None], arg: Any) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(fn, arg)


def roundrobin_members(counts: dict[str, int], mine: set[TP]) -> int | None:
    """How many members share the partitions of `counts` (topic -> partitions), from
    the ones the round-robin assignor gave this member (`mine`); None if it gave none.

    The assignor deals every partition, topics by name, to the members in turn
    (all of them subscribe to the same pattern), so a member's partitions are N
    apart in that order; one partition alone bounds N from below (N > its index,
    and its index + N is past the end): that bound is taken.
    """
    order = [(t, p) for t in sorted(counts) for p in range(counts[t])]
    at = [i for i, tp in enumerate(order) if tp in mine]
    if not at:
        return None
    if len(at) > 1:
        return at[1] - at[0]
    return max(at[0] + 1, len(order) - at[0])


def _call(consumer: Consumer, command: Callable[[Consumer], object]) -> None:
    try:
        command(consumer)
    except KafkaException as exc:  # say, a pause of a partition just revoked
        log.info("request consumer call failed", extra={"error": str(exc)})


def _parts(tps: Iterable[TP]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t, p in tps]


def _tps(positions: dict[TP, int]) -> list[TopicPartition]:
    return [TopicPartition(t, p, o) for (t, p), o in positions.items()]


def _settle(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)
