"""Faust behind one adapter: every private name of Faust (and of aiokafka under it)
that the pipeline touches lives in this module, and nowhere else.

`check()` runs at start-up: a name this adapter relies on that the installed Faust lacks
stops the worker with a message naming it and the Faust version, instead of a silent
fallback. Each consumer fix is pinned by a contract test (tests/unit/test_faustadapter.py)
that fails against an unpatched Faust.

What we touch, and why:

- the aiokafka driver's `Consumer` (subclassed, `install`): the fixes below, no subscription
  while there is no topic to subscribe to (aiokafka refuses it), and none that changes
  nothing (aiokafka would rejoin the group for it);
- the conductor's `_resubscribe_sleep_lock_seconds`: Faust coalesces subscription changes
  for 45 s, too long for a new partner to wait;
- the consumer thread's aiokafka consumer, for its subscription: the conductor drops a
  change flagged while the app rebalances, so the pipeline checks that its change took
  (`PipelineApp.until_subscribed`);
- the consumer thread's aiokafka `Fetcher._fetch_max_wait_ms`: Faust hard-codes 1,500 ms,
  and the embedded broker holds every fetch for its whole max-wait; and its
  `_prefetch_backoff` (`set_fetch_wait`): a flood's fetched records held back the fetch of
  every other partition on their broker for 100 ms;
- the Fetcher's `_get_actions_per_node`, `_proc_fetch_request`, `_in_flight`, `_check_crcs`
  and its client's `send` (`fetch_heavy_apart`): heavy partners fetched apart, and CRCs
  checked without holding the GIL (`pipeline.kafka.crcs`);
- the assignor's `external_topic_distribution`: how many group members consume request
  partitions (each worker plans with 1/N of an upstream key);
- a channel's buffer (`Channel._queue`): the request channel's is a lane per partner
  (`pipeline.kafka.lanes.FairBuffer`, a mode `FlowControlQueue` that keeps its pressure callbacks
  per lane), not one FIFO;
- the table manager's start (`TableManager`): Faust sleeps a second there so that tables
  defined after the app starts can register; we define none (our state is in
  `pipeline.kafka.statelog`), and every worker start paid that second.

The consumer fixes, all measured here, all Faust's own (they apply on any broker), numbered
as found; fix 1 (end offsets for table recovery on the embedded broker) went with the
tables, when state moved to `pipeline.kafka.statelog`.

2. No record lost at a rebalance. During Faust's recovery step the consumer may already
  fetch request records; Faust abandons those it cannot hand to the stream while its flow is
  stopped, and relies on seeking back to the committed offset afterwards. aiokafka seeks
  only where an offset above zero is committed, so on a partition with nothing committed (a
  new partner's topic, say) the abandoned records were skipped for good and their offsets
  committed past them. `seek_to_committed` here rewinds such partitions to their log start,
  which is what `auto_offset_reset=earliest` means.

3. No refetched record dropped. Faust drops a fetched record whose offset is below the
  highest it has delivered for that partition, to hide refetches. But records fetched before
  the seek keep being delivered after it, so the highest delivered offset climbs back above
  the refetched records, and a record whose first delivery was abandoned was dropped on its
  second (seen here: offsets 2-9 refetched, all dropped, 9 never served). `ReadOffsets`
  keeps Faust's bookkeeping of gaps in a partition (compaction, transaction markers), but no
  record is dropped.

4. No record cleared from the stream's queue after the seek. Faust resumes a worker after a
  rebalance in this order: seek the stream partitions to their committed offsets, resume
  flow control (which empties every stream queue), resume the consumer. But the consumer may
  already be running then, so records handed over between the seek and the emptying were
  thrown away; none of them is fetched again, and the commit passed over them (seen here:
  the record at the committed offset refetched 4 ms after the seek, gone 80 ms later, the
  next six served). `perform_seek` here stops the consumer's flow first: nothing reaches a
  queue until Faust resumes it, and everything past the committed offsets is fetched again.

5. No record dropped by a pause. Our intake pauses a partner's partitions when its queue is
  full (`FaustFlowControl`). Faust hands a fetched batch over record by record and drops
  those whose partition is no longer in its live set of active partitions, the very set a
  pause shrinks; aiokafka had already moved past them. With a queue of 4 per partner, 1,764
  of 2,000 requests never got an outcome. `_wait_next_records` here gives Faust a copy of
  the set the batch was fetched for; the pause takes effect from the next fetch.

6. No record committed past while it is not acked. Faust keeps a partition's acked offsets
  and commits their first consecutive run, refusing only when the run starts more than one
  past the committed position; but the committed position is the next offset to read, so an
  unacked record right at it (the oldest one in flight: a request a draining worker leaves
  for redelivery, a retry dropped when its partition moves) was committed past as soon as a
  later one was acked, and with nothing committed yet there was no check at all. Seen here:
  13 of 1,500 requests lost in a chaos run with one SIGTERM and one SIGKILL. `_new_offset`
  here commits nothing while the offset at the committed position (or, before any commit,
  where reading started) is not acked.

7. No crash when a batch outlives its partition. Faust asks for the highwater of each
  record's partition as it hands the batch over; one revoked meanwhile (a rebalance under
  way, and fix 5 keeps the batch's partitions) raised aiokafka's "Partition is not
  assigned", which crashed the fetcher and the worker. `highwater` here answers None, as for
  an unknown one; the dispatcher drops the record.

Records delivered twice are deduplicated by the dispatcher (by position) and by the replay
guard (by request_id)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from contextvars import ContextVar
from typing import Any, TypeVar, cast

from pipeline.errors import AdapterError
from pipeline.kafka.fetchlanes import HeavyTopics

log = logging.getLogger("pipeline.kafka.faustadapter")

TPKey = TypeVar("TPKey", bound=tuple[str, int])
_Q = TypeVar("_Q")


class _Floor(int):
    """The last offset delivered, which every offset compares as at or above.

    `offset >= floor` calls `floor.__le__(offset)` first (Python tries the
    reflected method of a right operand whose type subclasses the left's),
    while arithmetic on it stays plain int arithmetic.
    """

    def __le__(self, other: object) -> bool:
        return True


class ReadOffsets(dict[Any, Any]):
    """Faust consumer's `_read_offset`: remembers the last offset delivered per
    partition (so Faust still records gaps) but never makes Faust drop a record."""

    def __getitem__(self, tp: Any) -> _Floor | None:
        offset = self.get(tp)
        return None if offset is None else _Floor(offset)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Faust's reset to committed offsets after a seek: the next record starts afresh."""
        for tp in dict(*args, **kwargs):
            self.pop(tp, None)


def never_committed(
    committed: Mapping[TPKey, int | None], changelogs: Collection[str]
) -> list[TPKey]:
    """Stream partitions that aiokafka did not seek: nothing (or zero) committed."""
    return [tp for tp, offset in committed.items() if not offset and tp[0] not in changelogs]


# fmt: off
_CONSUMER_NAMES = ("highwaters", "highwater", "_wait_next_records", "perform_seek",
                   "seek_to_committed", "_seek", "stop_flow", "earliest_offsets", "_new_offset")
_QUEUE_NAMES = ("put_nowait_enhanced", "force_put_nowait", "maybe_endorse_pressure_drop",
                "pressure_high_size", "pressure_drop_size", "on_pressure_drop")
# fmt: on
REQUIRED: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("faust.transport.drivers.aiokafka", "Consumer", _CONSUMER_NAMES),
    ("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread", ("_ensure_consumer",)),
    ("faust.transport.drivers.aiokafka", "Transport", ("Consumer",)),
    ("faust.transport.conductor", "Conductor", ("_resubscribe_sleep_lock_seconds",)),
    ("faust.tables.manager", "TableManager", ("on_start", "_update_channels", "recovery")),
    ("faust.assignor.partition_assignor", "PartitionAssignor", ("external_topic_distribution",)),
    ("faust.channels", "Channel", ("queue",)),
    ("aiokafka.consumer.fetcher", "Fetcher", ("_get_actions_per_node", "_proc_fetch_request")),
    ("aiokafka.client", "AIOKafkaClient", ("send",)),
    ("mode.utils.queues", "FlowControlQueue", _QUEUE_NAMES),
)
#: Instance attributes that only exist once an object runs: (module, class, name),
#: checked in the source of the class's __init__.
REQUIRED_IN_INIT: tuple[tuple[str, str, str], ...] = (
    ("faust.transport.consumer", "Consumer", "_read_offset"),
    ("faust.transport.consumer", "Consumer", "_acked"),
    ("faust.transport.consumer", "Consumer", "_acked_index"),
    ("faust.transport.consumer", "Consumer", "_gap"),
    ("faust.transport.consumer", "Consumer", "_committed_offset"),
    ("aiokafka.consumer.fetcher", "Fetcher", "_fetch_max_wait_ms"),
    ("aiokafka.consumer.fetcher", "Fetcher", "_prefetch_backoff"),
    ("aiokafka.consumer.fetcher", "Fetcher", "_in_flight"),
    ("aiokafka.consumer.fetcher", "Fetcher", "_client"),
    ("aiokafka.consumer.fetcher", "Fetcher", "_check_crcs"),
    ("aiokafka.protocol.fetch", "FetchRequest", "_max_wait_ms"),
    ("aiokafka.protocol.fetch", "FetchRequest", "_min_bytes"),
    ("aiokafka.protocol.fetch", "FetchRequest", "_max_bytes"),
    ("aiokafka.protocol.fetch", "FetchRequest", "_isolation_level"),
    ("aiokafka.protocol.fetch", "FetchRequest", "_rack_id"),
    ("faust.channels", "Channel", "_queue"),
    ("faust.channels", "Channel", "maxsize"),
)


def channel_buffer(channel: Any, make: Callable[[int], _Q]) -> _Q:
    """The buffer behind a Faust channel, made by `make(maxsize)` on first use, as
    Faust's own `Channel.queue` makes its FIFO (a clone made for an agent makes
    its own). The stream reads it, and the conductor fills it, through mode's
    queue interface: `make` returns a mode `FlowControlQueue`."""
    if channel._queue is None:
        channel._queue = make(channel.maxsize or channel.app.conf.stream_buffer_maxsize)
    return cast(_Q, channel._queue)


def faust_version() -> str:
    import faust

    return str(faust.__version__)


def _missing(owner: str, name: str) -> AdapterError:
    return AdapterError(
        f"faust-streaming {faust_version()}: {owner} has no {name!r}, which "
        "pipeline/kafka/faustadapter.py relies on (written for faust-streaming 0.15.x); "
        "pin a supported version or update the adapter"
    )


def check() -> None:
    """Every private name this adapter uses is where it expects it; AdapterError if not."""
    import importlib
    import inspect

    for module_name, class_name, names in REQUIRED:
        owner = getattr(importlib.import_module(module_name), class_name, None)
        if owner is None:
            raise _missing(module_name, class_name)
        for name in names:
            if not hasattr(owner, name):
                raise _missing(f"{module_name}.{class_name}", name)
    for module_name, class_name, name in REQUIRED_IN_INIT:
        owner = getattr(importlib.import_module(module_name), class_name)
        if f"self.{name}" not in inspect.getsource(owner.__init__):
            raise _missing(f"{module_name}.{class_name}", name)


def commit_offset(
    acked: list[int], acked_index: set[int], gaps: Any, position: int | None
) -> int | None:
    """The offset to commit for a partition (fix 6), or None to commit nothing yet.

    `acked` are the offsets acked since the last commit, `gaps` the offset ranges
    with no record (compaction, transaction markers) that count as acked, and
    `position` the committed position: the next offset to read. The first
    consecutive run of acked offsets is committed only if it starts at `position`.
    Like Faust's own, it consumes what it commits from `acked` and `acked_index`.
    """
    from faust.utils.functional import consecutive_numbers

    if not acked:
        return None
    highest = max(acked)
    if gaps:
        ranges = sorted(gaps.overlap(0, highest), key=lambda interval: interval.begin)
        if ranges:
            filled = [offset for r in ranges for offset in range(r.begin, r.end)]
            acked.extend(filled)
            gaps.chop(0, max(filled[-1], highest + 1))
    acked.sort()
    if position is not None and acked[0] > position:
        return None  # the record at the committed position is not acked yet
    batch = next(consecutive_numbers(acked))
    acked[: len(batch)] = []
    acked_index.difference_update(batch)
    return int(batch[-1]) + 1


def install(app: Any) -> None:
    """Give the Faust app our consumer (call before anything creates Faust's)."""
    from faust.transport.drivers import aiokafka as driver

    class Consumer(driver.Consumer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._read_offset = ReadOffsets()
            #: Where reading started after the last seek, by partition (fix 6).
            self._positions: dict[Any, int] = {}

        async def subscribe(self, topics: Any) -> None:
            topics = set(topics)
            if not topics:
                # No partner yet (a fresh cluster): aiokafka refuses an empty
                # subscription, and there is nothing to join a group for.
                return
            if topics == subscribed_topics(self.app):
                return  # unchanged: aiokafka would rejoin the group all the same
            await super().subscribe(topics)

        def _new_offset(self, tp: Any) -> int | None:
            position = self._committed_offset[tp]
            return commit_offset(
                self._acked[tp],
                self._acked_index[tp],
                self._gap[tp],
                self._positions.get(tp) if position is None else position,
            )

        async def _wait_next_records(self, timeout: Any) -> tuple[Any, Any]:  # noqa: ASYNC109 (Faust's signature)
            records, active = await super()._wait_next_records(timeout)
            # The partitions these records were fetched for, not the live set
            # that a pause shrinks while the batch is still being handed over.
            return records, (None if active is None else set(active))

        def highwater(self, tp: Any) -> int | None:  # type: ignore[override] # aiokafka's may be None
            try:
                return cast("int | None", super().highwater(tp))
            except AssertionError:  # aiokafka's "Partition is not assigned" (fix 7)
                return None

        async def perform_seek(self) -> None:
            self.stop_flow()  # Faust resumes it once the stream queues are emptied
            await super().perform_seek()

        async def seek_to_committed(self) -> Mapping[Any, int]:
            committed = dict(await super().seek_to_committed())
            unset = never_committed(committed, self.app.tables.changelog_topics)
            if unset:
                starts = await self.earliest_offsets(*unset)
                for tp in unset:
                    start = int(starts.get(tp) or 0)
                    await self._seek(tp, start)
                    committed[tp] = start
            self._positions.update(
                (tp, offset) for tp, offset in committed.items() if isinstance(offset, int)
            )
            return committed

    class Transport(driver.Transport):
        pass

    Consumer.logger = driver.Consumer.logger  # Faust's own lines keep Faust's logger name
    Transport.Consumer = Consumer
    app._transport = Transport(app.conf.broker_consumer, app)


def table_manager() -> type:
    """Faust's TableManager without the second it waits at start for late tables."""
    from faust.tables.manager import TableManager as FaustTableManager

    class TableManager(FaustTableManager):
        async def on_start(self) -> None:
            if not self.should_stop:
                await self._update_channels()
                await self.recovery.start()

    return TableManager


def set_resubscribe_delay(app: Any, seconds: float) -> None:
    """How long Faust coalesces subscription changes before resubscribing."""
    app.topics._resubscribe_sleep_lock_seconds = seconds


def subscribed_topics(app: Any) -> frozenset[str]:
    """The topics the consumer is subscribed to now (aiokafka's own set; empty
    before the consumer thread runs or subscribes)."""
    from faust.exceptions import ConsumerNotStarted

    try:
        consumer = aiokafka_consumer(app)
    except ConsumerNotStarted:
        return frozenset()
    return frozenset(consumer.subscription())


def aiokafka_consumer(app: Any) -> Any:
    """The aiokafka consumer under Faust's consumer thread."""
    try:
        return app.consumer._thread._ensure_consumer()
    except AttributeError as exc:
        raise _missing("the Faust consumer thread's aiokafka consumer", str(exc.name)) from exc


def partitions_of(app: Any, topic: str) -> int | None:
    """How many partitions `topic` has, from the consumer's cluster metadata.

    (Faust's own `topic_partitions` reads the group coordinator's metadata
    snapshot, which only the group leader fills in: seen here, a second worker
    got None for a topic it consumed.)"""
    partitions = aiokafka_consumer(app).partitions_for_topic(topic)
    return len(partitions) if partitions else None


#: How long aiokafka holds back every fetch to a broker while records of any one
#: of its partitions wait, fetched and not yet taken (its default: 100 ms).
PREFETCH_BACKOFF_S = 0.01


def set_fetch_wait(app: Any, ms: int) -> None:
    """The consumer's fetch max-wait (Faust hard-codes 1,500 ms), and its prefetch
    back-off (`PREFETCH_BACKOFF_S`). Call once it consumes.

    aiokafka sends a broker no fetch at all while any of its partitions holds
    fetched records younger than the back-off. A flood's fetched records did,
    for as long as Faust took to hand them over, and a light partner's records
    on the same broker were not even fetched: its first request under the flood
    waited 146-184 ms before Faust's stream had it (fairness benchmark, warm
    key). A partition with records waiting is still left out of the fetch; the
    others are fetched 10 ms on (`kafka_ms` of that request: 63-64 ms).
    """
    fetcher = aiokafka_consumer(app)._fetcher
    for name in ("_fetch_max_wait_ms", "_prefetch_backoff"):
        if not hasattr(fetcher, name):
            raise _missing("aiokafka's Fetcher", name)
    fetcher._fetch_max_wait_ms = ms
    fetcher._prefetch_backoff = PREFETCH_BACKOFF_S


def members_consuming(app: Any, topic_prefix: str) -> int:
    """Group members that own partitions of topics with `topic_prefix` (from Faust's
    assignor, which shares every member's assignment with every member)."""
    distribution = app.assignor.external_topic_distribution
    owners = {
        url
        for url, topics in distribution.items()
        if any(t.startswith(topic_prefix) and parts for t, parts in topics.items())
    }
    return max(1, len(owners))


#: The fetch lane a fetch task sends for (set in the task that sends it).
_FETCH_LANE: ContextVar[int] = ContextVar("pipeline_fetch_lane", default=0)
#: aiokafka keys its connections by (node, group): lane n above the shared one
#: fetches on group LANE_GROUP + n, a connection of its own.
LANE_GROUP = 100


def fetch_heavy_apart(
    consumer: Any, heavy: HeavyTopics, check_crcs: Callable[[Any], None] | None = None
) -> None:
    """Fetch `heavy` topics apart from the others (`pipeline.kafka.fetchlanes`), on an
    aiokafka consumer that runs: its Fetcher sends each lane's partitions of a
    broker in a fetch of their own, one in flight per broker and lane, and every
    fetch response tells `heavy` how large its batches were. `check_crcs` (see
    `pipeline.kafka.crcs`) checks every fetch response instead of aiokafka."""
    from aiokafka.client import ConnectionGroup
    from aiokafka.protocol.fetch import FetchRequest

    fetcher = consumer._fetcher
    if "_get_actions_per_node" in vars(fetcher):
        return  # done at an earlier assignment: the same fetcher
    client = fetcher._client
    aiokafka_actions = fetcher._get_actions_per_node
    aiokafka_proc = fetcher._proc_fetch_request
    aiokafka_send = client.send
    in_flight = fetcher._in_flight

    def lane_request(r: Any, topics: list[Any]) -> Any:
        args = (r._max_wait_ms, r._min_bytes, r._max_bytes, r._isolation_level, topics)
        return FetchRequest(*args, rack_id=r._rack_id)

    #: Topics in a fetch under way: never in a second one (a topic changes lanes
    #: when its hold ends, and its partitions must not be fetched twice at once).
    fetching: set[str] = set()

    def get_actions_per_node(assignment: Any) -> tuple[Any, ...]:
        requests, *rest = aiokafka_actions(assignment)
        if not fetching and not heavy.any():
            return (requests, *rest)  # no heavy partner: aiokafka's own, keyed by node id
        # aiokafka leaves out a broker's partitions while a task keyed by its
        # node id is in flight: with a heavy partner, fetches are keyed (node id,
        # lane), so only offset resets and a fetch from before hold a broker back.
        by_lane = []
        for node_id, request in requests:
            lanes = heavy.split([t for t in request.topics if t[0] not in fetching])
            for lane, topics in lanes.items():
                if (node_id, lane) not in in_flight:
                    same = len(topics) == len(request.topics)
                    by_lane.append(
                        ((node_id, lane), request if same else lane_request(request, topics))
                    )
        return (by_lane, *rest)

    async def proc_fetch_request(assignment: Any, node: Any, request: Any) -> bool:
        if not isinstance(node, tuple):
            return bool(await aiokafka_proc(assignment, node, request))
        node, lane = node
        _FETCH_LANE.set(lane)  # this task's own context: its send below
        topics = {topic for topic, _partitions in request.topics}
        fetching.update(topics)
        try:
            return bool(await aiokafka_proc(assignment, node, request))
        finally:
            fetching.difference_update(topics)

    async def send_on_lane(
        node_id: Any, request: Any, *, group: Any = ConnectionGroup.DEFAULT
    ) -> Any:
        if not isinstance(request, FetchRequest):
            return await aiokafka_send(node_id, request, group=group)
        lane = _FETCH_LANE.get()
        response = await aiokafka_send(node_id, request, group=LANE_GROUP + lane if lane else group)
        if check_crcs is not None:
            check_crcs(response)  # raised: aiokafka logs it and fetches the same again
        heavy.saw_response(response.topics)
        return response

    if check_crcs is not None:
        fetcher._check_crcs = False
    fetcher._get_actions_per_node = get_actions_per_node
    fetcher._proc_fetch_request = proc_fetch_request
    client.send = send_on_lane
