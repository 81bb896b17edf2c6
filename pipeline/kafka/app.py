"""create_app(settings, ...): the Faust app with its topics and agent wired, nothing else.

Faust's aiokafka driver cannot subscribe by pattern, so the request topics are
one `RequestTopics` channel whose topic list follows the partner registry:
`set_request_topics` swaps the list and asks the conductor to resubscribe
(after `resubscribe_delay_s`, shortened from Faust's 45 s).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import faust
from faust.types import TP

from pipeline.config import Settings
from pipeline.kafka import crcs, faustadapter
from pipeline.kafka.fetchlanes import HeavyTopics
from pipeline.kafka.lanes import LANES_SHARED, FairBuffer
from pipeline.partners import REQUESTS_PREFIX
from pipeline.records import AckFn, OutMessage, SourceRecord

log = logging.getLogger("pipeline.kafka.app")

#: The most a fetch asks of one partition. Small, so that a flooding partner's
#: records do not queue up by the thousand before our fair queues see them; a
#: partner whose batches come over it is fetched apart (`pipeline.kafka.fetchlanes`).
FETCH_PARTITION_BYTES = 256 * 1024

Handler = Callable[[SourceRecord, AckFn], Awaitable[None]]
RevokedHook = Callable[[Iterable[tuple[str, int]]], Awaitable[None]]
AssignedHook = Callable[[], None]
RecoveredHook = Callable[[], None]


class RequestTopics(faust.Topic):
    """The request topics' channel (the agent's clones of it are found by type),
    buffered in a lane per partner (see lanes.py): each lane holds up to
    `stream_buffer_maxsize` records before its partitions stop being fetched,
    and all of them together up to `LANES_SHARED` times that."""

    @property
    def queue(self) -> FairBuffer:
        def make(lane_max: int) -> FairBuffer:
            return FairBuffer(
                maxsize=lane_max * LANES_SHARED,
                lane_max=lane_max,
                flow_control=self.app.flow_control,
                clear_on_resume=True,
            )

        return faustadapter.channel_buffer(self, make)


@dataclass
class PipelineApp:
    """The Faust app and the channel whose topic list follows the registry."""

    app: faust.App
    requests: RequestTopics
    #: Partners whose records outgrow a fetch, fetched apart (`pipeline.kafka.fetchlanes`).
    heavy: HeavyTopics

    def request_topics(self) -> list[str]:
        return list(self.requests.topics)

    def tune_fetch_wait(self, ms: int) -> None:
        """Set the consumer's fetch wait, which Faust hard-codes to 1,500 ms, fetch
        heavy partners apart from the others and check CRCs holding no GIL."""
        faustadapter.set_fetch_wait(self.app, ms)
        check = crcs.check_fetched if crcs.FAST else None
        faustadapter.fetch_heavy_apart(faustadapter.aiokafka_consumer(self.app), self.heavy, check)

    def owned_partitions(self) -> set[tuple[str, int]]:
        """The request topic partitions this worker consumes."""
        assignment = self.app.consumer.assignment()
        return {
            (tp.topic, tp.partition) for tp in assignment if tp.topic.startswith(REQUESTS_PREFIX)
        }

    def partition_count(self, topic: str) -> int | None:
        """How many partitions `topic` really has (from the consumer's metadata)."""
        return faustadapter.partitions_of(self.app, topic)

    def workers_consuming(self) -> int:
        """Members of the group that own request partitions."""
        return faustadapter.members_consuming(self.app, REQUESTS_PREFIX)

    def set_request_topics(self, topics: Iterable[str]) -> bool:
        """Subscribe the running agent to `topics`; True if anything changed."""
        wanted = sorted(set(topics))
        if wanted == sorted(self.requests.topics):
            return False
        self.requests.topics = list(wanted)
        self._flag_subscription()
        return True

    def _flag_subscription(self) -> None:
        conductor = self.app.topics
        for channel in list(conductor):
            if isinstance(channel, RequestTopics):
                channel.topics = list(self.requests.topics)
                # discard + add is the conductor's public way to flag a change
                conductor.discard(channel)
                conductor.add(channel)

    async def until_subscribed(self, patience_s: float, poll_s: float = 0.1) -> None:
        """Return once the consumer subscribes to every request topic.

        Faust's conductor drops a change flagged while the app rebalances (its
        `_subscriber` clears the change event then): a partner added during a
        rebalance was never consumed. So a change still missing when a
        rebalance ends is flagged again at once (waiting `patience_s` first
        cost a partner added during another's rebalance 1.2 s more here: served
        4.9-5.0 s after the first addition, against 5.9-6.0 s), and one
        still missing `patience_s` (longer than the conductor's resubscribe
        delay) after it was flagged is flagged again. Flagging twice costs
        nothing: an unchanged subscription is not made again (see
        faustadapter)."""
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        rebalanced = False
        while missing := set(self.requests.topics) - faustadapter.subscribed_topics(self.app):
            await asyncio.sleep(poll_s)
            if self.app.rebalancing:
                rebalanced = True
            elif rebalanced or loop.time() - quiet_since >= patience_s:
                rebalanced = False
                log.info(
                    "subscription change lost in a rebalance: asking again",
                    extra={"topics": sorted(missing)},
                )
                self._flag_subscription()
                quiet_since = loop.time()


#: How stale the worker's and partners' view of a topic's partitions may get.
METADATA_MAX_AGE_MS = 30_000


def create_app(
    settings: Settings,
    *,
    handler: Handler,
    request_topics: Iterable[str],
    on_revoked: RevokedHook | None = None,
    on_assigned: AssignedHook | None = None,
    on_recovered: RecoveredHook | None = None,
) -> PipelineApp:
    faustadapter.check()  # the Faust we rely on, or stop now, saying what is missing
    t = settings.timings
    credentials: Any = None
    if settings.sasl_mechanism:
        credentials = faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            mechanism=settings.sasl_mechanism,
            ssl_context=settings.aiokafka_config().get("ssl_context"),
        )
    brokers = ";".join(f"kafka://{b.strip()}" for b in settings.bootstrap_servers.split(","))
    app = faust.App(
        settings.group_id,
        broker=brokers,
        broker_credentials=credentials,
        broker_session_timeout=t.session_timeout_s,
        broker_heartbeat_interval=t.heartbeat_interval_s,
        broker_commit_interval=t.commit_interval_s,
        # At least once: offsets are committed only for acked records, and we
        # ack only after the outcome is on the broker. Not Faust's exactly_once
        # (a producer per partition, sends inside an agent's event only): on
        # Kafka each outcome commits with its done marker (pipeline/kafka/outbox.py),
        # and a redelivered record whose marker committed gets no second one.
        processing_guarantee="at_least_once",
        # Do not block a rebalance until every queued request is served (that
        # can take minutes under rate limits); revoked work is redelivered.
        stream_wait_empty=False,
        consumer_auto_offset_reset="earliest",
        # Partitions added to a request topic (CreatePartitions) are seen within
        # this, and the group rebalances onto them without a restart (aiokafka's
        # default is 5 minutes, during which records on a new partition wait).
        consumer_metadata_max_age_ms=METADATA_MAX_AGE_MS,
        producer_acks=-1,
        producer_linger_ms=2,
        # Images and PDFs make large requests, dead letters and responses.
        producer_max_request_size=settings.max_message_bytes,
        # Small fetches and buffers: a flooding partner's records must not queue
        # up by the thousand before our fair queues see them. The agent's buffer
        # is a lane per partner (`RequestTopics.queue`): this is one lane's size.
        # (When it was one FIFO, at 32 or 64 the latency benchmark's intake p50
        # went from 16 ms to 35-40 ms, medians of three.)
        stream_buffer_maxsize=256,
        broker_max_poll_records=256,
        consumer_max_fetch_size=FETCH_PARTITION_BYTES,
        web_enabled=False,
        # Members are told apart by URL in Faust's assignment metadata; without
        # the web server every worker on a host would otherwise share one.
        canonical_url=f"http://{socket.gethostname()}.pid{os.getpid()}.invalid:6066",
        topic_disable_leader=True,
        store="memory://",
        TableManager=faustadapter.table_manager(),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.replication_factor,
    )
    # Before anything creates Faust's consumer (see faustadapter.py for why).
    faustadapter.install(app)
    faustadapter.set_resubscribe_delay(app, t.resubscribe_delay_s)
    channel = RequestTopics(
        app,
        topics=sorted(set(request_topics)),
        key_serializer="raw",
        value_serializer="raw",
    )

    async def process_requests(stream: faust.StreamT[bytes]) -> None:
        # noack: an event is acked by the dispatcher once its outcome is
        # published, possibly long after the stream moved on.
        async for event in cast(Any, stream).noack().events():
            message = event.message
            record = SourceRecord(
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                key=message.key,
                value=message.value,
                headers=_headers(message.headers),
                timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
                # Faust's monitor stamps time_in (monotonic) as the stream takes it
                # from the agent's buffer (the stream inlines Consumer.track_message).
                fetched_mono=getattr(message, "time_in", None),
                arrived_mono=time.monotonic(),
            )

            async def ack(event: Any = event) -> None:
                await stream.ack(event)

            try:
                await handler(record, ack)
            except Exception:  # the agent must outlive any one record
                log.exception(
                    "handler raised",
                    extra={
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                    },
                )

    app.agent(channel, name="pipeline.requests")(process_requests)

    if on_revoked is not None:
        hook = on_revoked

        async def _revoked(sender: Any, *args: Any, signal: Any = None, **kw: Any) -> None:
            revoked: set[TP] = args[0] if args else kw.get("revoked", set())
            # Awaited: the group's rebalance goes on when the hook returns.
            await hook((tp.topic, tp.partition) for tp in revoked)

        cast(Any, app.on_partitions_revoked).connect(_revoked)

    if on_assigned is not None:
        assigned_hook = on_assigned

        async def _assigned(sender: Any, *args: Any, signal: Any = None, **kw: Any) -> None:
            assigned_hook()

        cast(Any, app.on_partitions_assigned).connect(_assigned)

    if on_recovered is not None:
        recovered_hook = on_recovered

        async def _recovered(sender: Any, *args: Any, signal: Any = None, **kw: Any) -> None:
            recovered_hook()

        cast(Any, app.on_rebalance_complete).connect(_recovered)

    return PipelineApp(app, channel, HeavyTopics(FETCH_PARTITION_BYTES))


def _headers(raw: Any) -> list[tuple[str, bytes]]:
    if not raw:
        return []
    items = raw.items() if isinstance(raw, dict) else raw
    return [(str(k), bytes(v) if v is not None else b"") for k, v in items]


class FaustPublisher:
    """Produce through Faust's producer and wait for the broker's acks."""

    def __init__(self, app: faust.App) -> None:
        self._app = app
        self._topics: dict[str, Any] = {}

    def _topic(self, name: str) -> Any:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = self._app.topic(
                name, key_serializer="raw", value_serializer="raw"
            )
        return topic

    async def publish(self, messages: list[OutMessage]) -> None:
        futures = [
            await self._topic(m.topic).send(key=m.key, value=m.value, headers=m.headers or None)
            for m in messages
        ]
        for fut in futures:
            await fut


class FaustFlowControl:
    """Pause and resume fetching a partner's request topic partitions."""

    def __init__(self, app: faust.App, topic_of: Callable[[str], str]) -> None:
        self._app = app
        self._topic_of = topic_of

    def _tps(self, partner_id: str) -> set[TP]:
        topic = self._topic_of(partner_id)
        try:
            assignment = self._app.consumer.assignment()
        except Exception:  # not started yet: nothing assigned to pause
            return set()
        return {tp for tp in assignment if tp.topic == topic}

    def pause(self, partner_id: str) -> None:
        tps = self._tps(partner_id)
        if tps:
            self._app.consumer.pause_partitions(tps)

    def resume(self, partner_id: str) -> None:
        tps = self._tps(partner_id)
        if tps:
            self._app.consumer.resume_partitions(tps)
