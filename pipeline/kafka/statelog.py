"""The worker's durable state, in one log every worker follows in full.

Two kinds of entries must outlive a worker: "this request is done" markers (the
replay guard's) and spend tallies (the budget ledger's). They live in the topic
`claude.pipeline.state` (compacted on a real broker), keyed `<table>/<key>`,
JSON values, deletions as tombstones. Every worker reads the whole topic from
its beginning at start and keeps following it, outside the consumer group.

Why not Faust tables, which this replaced: a table writes an entry to the
changelog partition of the record that caused it, and a worker recovers only the
changelog partitions numbered like the request partitions it was assigned. That
holds only while every partner topic has exactly the tables' partition count: a
partner topic with more partitions crashed the worker (Faust's producer refuses
a changelog partition that does not exist), and with fewer, entries landed where
their partition's next owner never looked. Following everything makes the state
independent of how request topics are partitioned and of who owns what.

The ordering rules that make it exact:

- *Read your group's writes before you act* (`sync`): after an assignment, a
  worker writes a marker record to every partition of the log and reads until
  it sees its markers back. Everything a previous owner wrote before it let go
  of a partition (or before it was killed: its writes are acknowledged before
  its offsets are committed) is in the log before the markers, so it is applied
  before the worker handles a single record. This needs no end-offset query,
  which the embedded broker answers wrongly (see docs/kafka.md).
- *One writer per entry*: a worker applies its own writes at once and skips
  them when it reads them back (its incarnation id is in a header); an entry
  another worker may also write is keyed by its writer (spend tallies), so no
  write ever overwrites someone else's newer value.
- *Writes in order*: one task sends them, in the order they were made, and
  each write's awaitable completes when the broker has acknowledged it.

Its size: a done marker per request for as long as the request's signature
stays valid (minutes; swept), and a spend tally per partner, period, partition
and worker incarnation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from pipeline.config import Settings
from pipeline.kafka.outbox import Outbox
from pipeline.kafka.producer import AsyncProducer
from pipeline.partners import STATE_TOPIC, transactional_prefix
from pipeline.records import OutMessage
from pipeline.state import Listener

log = logging.getLogger("pipeline.kafka.statelog")

WRITER_HEADER = "writer"
_SYNC = "~sync/"  # the key prefix of sync markers (not a table name: tables are words)
#: How long a transaction a killed worker left open holds back read_committed
#: readers of the partitions it wrote, before the broker aborts it.
TRANSACTION_TIMEOUT_MS = 10_000


class LogTable:
    """One table of the log: a `pipeline.state.Store`."""

    def __init__(self, log_: StateLog, name: str) -> None:
        self._log = log_
        self.name = name
        self.data: dict[str, Any] = {}
        self._listeners: list[Listener] = []

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def watch(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def changed(self, key: str, value: Any) -> None:
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value
        for listener in self._listeners:
            listener(key, value)

    def put(self, key: str, value: Any) -> Awaitable[None]:
        """Write; the awaitable completes once the broker has the write."""
        self.changed(key, value)
        return self._log.write(f"{self.name}/{key}", json.dumps(value).encode())

    def put_local(self, key: str, value: Any) -> None:
        self.changed(key, value)

    def delete(self, key: str) -> None:
        """Forget an entry here, and in the log if this worker wrote it (a tombstone).

        Entries written by others are forgotten locally only: every worker sweeps
        the same expired entries, and one tombstone per entry is enough (a dead
        writer's entries are dropped by the log's retention)."""
        value = self.data.get(key)
        if value is None:
            return
        self.changed(key, None)
        if isinstance(value, dict) and value.get("w") == self._log.writer:
            tombstone = self._log.write(f"{self.name}/{key}", None)
            tombstone.add_done_callback(_quiet)

    def remove(self, key: str) -> Awaitable[None]:
        """Delete an entry whoever wrote it: a tombstone, durable once awaited."""
        self.changed(key, None)
        return self._log.write(f"{self.name}/{key}", None)

    def items(self) -> Iterable[tuple[str, Any]]:
        return list(self.data.items())


class StateLog:
    """The state topic, followed from its beginning, written in order."""

    def __init__(
        self,
        settings: Settings,
        writer: str | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._settings = settings
        self._on_error = on_error
        #: This process's id in the log (a new one per start: a restarted
        #: worker reads what its previous incarnation wrote like anyone's).
        self.writer = writer or secrets.token_hex(4)
        self._tables: dict[str, LogTable] = {}
        self._producer: Any = None
        self._consumer: Any = None
        self._partitions: list[int] = []
        self._headers = [(WRITER_HEADER, self.writer.encode())]
        #: Every batch of writes, outcomes included (`send`), is one transaction:
        #: a request's response, usage record and done marker are visible together
        #: or not at all (to read_committed readers, which the follower is then).
        self.transactional = settings.transactional
        self.outbox = Outbox(self.transactional)
        self._tasks: list[asyncio.Task[None]] = []
        self._syncs = 0
        self._waiting: dict[str, asyncio.Future[None]] = {}  # sync marker key -> seen
        self._synced = asyncio.Event()
        self._resync: asyncio.Future[None] | None = None
        self._again = False
        self.applied = 0  # records applied from other writers (for tests and logs)

    def table(self, name: str) -> LogTable:
        if "/" in name or name.startswith("~"):
            raise ValueError(f"bad state table name: {name!r}")
        if name not in self._tables:
            self._tables[name] = LogTable(self, name)
        return self._tables[name]

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Connect, read the whole log, and keep following it."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        conf = self._settings.aiokafka_config()
        profile = self._settings.broker_profile
        self._producer = AsyncProducer(
            self._settings,
            transactional_id(self._settings.group_id, self.writer) if self.transactional else None,
            TRANSACTION_TIMEOUT_MS if self.transactional else None,
        )
        self._consumer = AIOKafkaConsumer(
            **conf,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=profile.follow_fetch_wait_ms,
            # never a marker whose outcome was aborted
            isolation_level="read_committed" if self.transactional else "read_uncommitted",
        )
        await self._producer.start()
        await self._consumer.start()
        self._partitions = sorted(self._consumer.partitions_for_topic(STATE_TOPIC) or {0})
        self._consumer.assign([TopicPartition(STATE_TOPIC, p) for p in self._partitions])
        await self._consumer.seek_to_beginning()
        self._tasks = [
            asyncio.create_task(self.outbox.run(self._producer), name="state-writer"),
            asyncio.create_task(self._follow(), name="state-follower"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_done)
        await self.sync()

    def _task_done(self, task: asyncio.Future[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("the state log stopped", exc_info=exc)
        if self._on_error is not None and exc is not None:
            self._on_error(exc)

    async def stop(self) -> None:
        """Stop after the writes made so far are sent (a worker stops after its requests)."""
        if self._producer is not None and self._tasks:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10.0):
                    await self.outbox.join()
        for task in [*self._tasks, *([self._resync] if self._resync else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        self._consumer = self._producer = None

    # -- reading -------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def resync(self) -> None:
        """Partitions moved: hold record handling until the log is read to now."""
        self._synced.clear()
        self._again = True  # a sync under way wrote its markers too early: one more round
        if self._resync is None or self._resync.done():
            self._resync = asyncio.ensure_future(self.sync())
            self._resync.add_done_callback(self._task_done)

    async def sync(self) -> None:
        """Hold record handling until every write acknowledged before the call has
        been applied."""
        self._synced.clear()
        self._again = True
        while self._again:
            self._again = False
            await self.caught_up()
        self._synced.set()

    async def caught_up(self) -> None:
        """Return once every write acknowledged before the call has been applied
        (records keep being handled meanwhile)."""
        self._syncs += 1
        markers = []
        for partition in self._partitions:
            key = f"{_SYNC}{self.writer}/{self._syncs}/{partition}"
            seen = self._waiting[key] = asyncio.get_running_loop().create_future()
            markers.append(seen)
            await self.write(key, None, partition)
        await asyncio.gather(*markers)

    async def _follow(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    self.apply(record.key, record.value, record.headers)

    def apply(self, key: bytes | None, value: bytes | None, headers: Any) -> None:
        """Apply one record read from the log (skipping this process's own writes)."""
        if not key:
            return
        name, _, entry = key.decode("utf-8", "replace").partition("/")
        if name + "/" == _SYNC:
            waiter = self._waiting.pop(key.decode(), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if dict(headers or ()).get(WRITER_HEADER) == self.writer.encode():
            return  # applied when written
        table = self._tables.get(name)
        if table is None:
            return  # a table this version does not use
        try:
            decoded = None if value is None else json.loads(value)
        except ValueError:
            log.warning("skipping a corrupt state entry", extra={"key": key.decode()})
            return
        table.changed(entry, decoded)
        self.applied += 1

    # -- writing -------------------------------------------------------------------

    def write(
        self, key: str, value: bytes | None, partition: int | None = None
    ) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.outbox.put((STATE_TOPIC, key.encode(), value, partition, self._headers, done))
        return done

    def send(self, messages: Iterable[OutMessage]) -> list[asyncio.Future[None]]:
        """Records for other topics (a request's outcome), sent by the same
        producer, so that `together` can make them one transaction with state writes."""
        return self.outbox.send(messages)

    def together(self) -> contextlib.AbstractContextManager[None]:
        """The writes and sends made inside (with no await between them) go out in
        one transaction when `transactional`: all visible or none."""
        return self.outbox.together()


def transactional_id(group_id: str, writer: str) -> str:
    """A worker incarnation's transactional id (the ACLs grant the prefix)."""
    return f"{transactional_prefix(group_id)}{writer}"


def _quiet(fut: asyncio.Future[None]) -> None:
    """A write nobody waits for: its failure is logged, not raised at exit."""
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("a state write failed", exc_info=fut.exception())
