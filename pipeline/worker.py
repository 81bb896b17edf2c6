"""The running worker: wires the engine to Faust and starts/stops everything.

`WorkerRuntime` owns the long-lived parts (metrics server, partner follower,
dispatcher, Claude clients); `run_worker` boots it under Faust's worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import defaultdict
from collections.abc import Iterable

import faust
from mode import Service

from pipeline import eventloop, failpoints
from pipeline.config import Settings
from pipeline.errors import ConfigError, SecretError
from pipeline.factory import Parts, check_broker_fits
from pipeline.failpoints import Failpoints
from pipeline.kafka.app import create_app
from pipeline.kafka.clients import core_topics, ensure_topics, partner_topics
from pipeline.kafka.consumer import PartnerFlow, RequestConsumer
from pipeline.kafka.follower import PartnerFollower, load_registry
from pipeline.kafka.homes import Homes, HomeScan
from pipeline.kafka.producer import AsyncProducer
from pipeline.kafka.statelog import StateLog
from pipeline.lifecycle.batchanswers import Answers
from pipeline.lifecycle.batchlane import BatchLane
from pipeline.lifecycle.dispatch import DispatchConfig, Dispatcher, assemble
from pipeline.lifecycle.examiner import Examiner
from pipeline.lifecycle.intake import Intake
from pipeline.lifecycle.outcomes import OutcomeBuilder
from pipeline.lifecycle.placement import PartitionCounts
from pipeline.lifecycle.responsecache import ResponseCache
from pipeline.limits.pricing import PriceTable
from pipeline.limits.ratelimit import Limiter
from pipeline.limits.retry import RetryPolicy
from pipeline.ops.gauges import Gauges
from pipeline.ops.health import Health, HttpEndpoint
from pipeline.ops.logs import Redactor, setup_logging
from pipeline.ops.metrics import Metrics
from pipeline.partners import (
    DLQ_TOPIC,
    USAGE_TOPIC,
    Partner,
    Registry,
    requests_topic,
    responses_topic,
)
from pipeline.records import AckFn, SourceRecord
from pipeline.schemas import Codec
from pipeline.security.registryauth import RegistryPolicy, policy_for
from pipeline.security.sealing import Sealer, load_keyring
from pipeline.state import BudgetLedger, Ownership, ReplayGuard
from pipeline.upstream import claude
from pipeline.upstream.batches import BatchApi
from pipeline.upstream.claude import ClaudeClient
from pipeline.upstream.keys import ApiKeys

log = logging.getLogger("pipeline.worker")


def request_parts(
    rt: WorkerRuntime, guard: ReplayGuard, prices: PriceTable
) -> tuple[Intake, OutcomeBuilder, BatchLane, ResponseCache]:
    """A worker's intake, outcome builder, batch lane and response cache (over its
    state log's `batches` and `responses` tables)."""
    settings, registry, secrets = rt.settings, rt.registry, rt.secrets
    intake = Intake(
        registry,
        rt.codec,
        secrets,
        settings.signature_max_age_s,
        prices=prices,
        max_value_bytes=settings.max_record_bytes,
        partitions=rt._partitions.every,
    )
    builder = OutcomeBuilder(
        prices,
        lambda: int(time.time() * 1000),
        Sealer(settings.dlq_keys_ref, secrets.resolve, registry).seal,
    )
    responses = ResponseCache(rt.statelog.table("responses"), rt.metrics, rt.statelog.writer)
    batches = rt.statelog.table("batches")
    lane = BatchLane(
        table=batches,
        api=BatchApi(rt.claude),
        keys=rt.api_keys,
        intake=intake,
        answers=Answers(
            table=batches,
            registry=rt.registry,
            ledger=rt.ledger,
            guard=guard,
            builder=builder,
            prices=prices,
            metrics=rt.metrics,
            responses=responses,
        ),
        metrics=rt.metrics,
        config=rt.settings.batch,
        writer=rt.statelog.writer,
        failpoints=Failpoints(failpoints.parse(rt.settings.failpoints)),
    )
    return intake, builder, lane, responses


class WorkerRuntime(Service):
    """Everything a worker runs besides Faust itself."""

    def __init__(
        self,
        parts: Parts,
        registry: Registry,
        redactor: Redactor,
        policy: RegistryPolicy | None = None,
    ) -> None:
        super().__init__()
        settings = parts.settings
        self.settings = settings
        self.registry = registry
        self.codec = codec = parts.codec
        self.metrics = Metrics()
        self.metrics_port: int | None = None
        self.redactor = redactor
        self.secrets = secrets = parts.secrets
        prices = (
            PriceTable.from_file(settings.prices_file) if settings.prices_file else PriceTable()
        )
        self._set_owned(set())
        self._partitions = PartitionCounts(lambda topic: self.intake.partition_count(topic))
        self.health = Health(self.metrics.ready)
        self.endpoint = HttpEndpoint(self.metrics.registry, self.health)
        self.claude = ClaudeClient(settings.anthropic_base_url, settings.upstream_timeout_s)
        self.api_keys = ApiKeys(secrets, settings.anthropic_api_key)
        self.limiter = Limiter(
            upstream=settings.upstream_limits,
            slack=settings.limit_slack,
            # a partner's RPM and TPM: the part its owned partitions carry
            partner_share=lambda partner_id: self._ownership(partner_id).fraction,
        )
        self.examiner = Examiner()
        self.app = create_app(settings)
        self.intake = RequestConsumer(
            settings,
            handler=self._handle,
            topics=[requests_topic(p.partner_id) for p in registry],
            on_revoked=self._on_revoked,
            on_assigned=self._on_assigned,
            on_error=self._fatal,
        )
        self.producer = AsyncProducer(settings)
        self.statelog = StateLog(settings, on_error=self._fatal)
        self.ledger = BudgetLedger(
            self.statelog.table("spend"),
            ownership=self._ownership,
            writer=self.statelog.writer,
            ready=lambda: self.statelog.synced,
        )
        guard = ReplayGuard(
            self.statelog.table("served"), settings.signature_max_age_s, writer=self.statelog.writer
        )
        self.homes = HomeScan(settings)
        config = DispatchConfig(
            max_in_flight=settings.max_in_flight,
            max_queued_per_partner=settings.max_queued_per_partner,
            max_record_bytes=settings.max_record_bytes,
            failpoints=failpoints.parse(settings.failpoints),
        )
        intake, builder, self.lane, responses = request_parts(self, guard, prices)
        stages = assemble(
            registry=registry,
            intake=intake,
            claude=self.claude,
            keys=self.api_keys,
            codec=codec,
            builder=builder,
            publisher=self.producer,
            metrics=self.metrics,
            policy=RetryPolicy(
                settings.max_attempts, settings.backoff_base_s, settings.backoff_cap_s
            ),
            config=config,
            flow=PartnerFlow(self.intake, requests_topic),
            limiter=self.limiter,
            guard=guard,
            ledger=self.ledger,
            state_synced=self.statelog.wait_synced,
            prices=prices,
            examiner=self.examiner,
            homes=Homes(self.homes.holds, guard, self.statelog.caught_up),
            # on Kafka, a response and its done marker commit together
            atomic=self.statelog if settings.transactional else None,
            lane=self.lane,
            responses=responses,
        )
        self.dispatcher = Dispatcher(stages, config, on_fatal=self._fatal)
        self.follower = PartnerFollower(
            settings,
            codec,
            registry,
            on_error=self._fatal,
            policy=policy,
            ignored=self.metrics.registry_ignored.inc,
        )
        registry.listeners.append(self._on_partner_change)
        self.subscriptions = NewPartnerTopics(settings, codec, self.intake)
        self.gauges = Gauges(settings, self.metrics, registry, self.ledger, lambda: self._owned)
        self._crash_task: asyncio.Future[None] | None = None
        self._heartbeat: asyncio.Future[None] | None = None
        self._ready_task: asyncio.Future[None] | None = None
        self._background: set[asyncio.Future[None]] = set()

    async def _handle(self, record: SourceRecord, ack: AckFn) -> None:
        await self.dispatcher.handle(record, ack)

    async def _on_revoked(self, positions: Iterable[tuple[str, int]]) -> None:
        revoked = set(positions)
        # Only what left: a budget share of partitions still owned stays valid, so
        # retries re-queued during the rebalance are not refused as over budget.
        self._set_owned(self._owned - revoked)
        self.health.set_not_ready("rebalancing")
        self.dispatcher.on_partitions_revoked(revoked)
        # Calls to Claude under way for those partitions finish here, outcome and
        # "served" marker written, before their next owner reads them: otherwise
        # it calls Claude a second time (and spends the budget twice).
        left = await self.dispatcher.finish_revoked(revoked, self.settings.shutdown_grace_s)
        if left:
            log.warning(
                "requests of revoked partitions still running: their next owner may "
                "call Claude for them again",
                extra={"count": left},
            )

    def _ownership(self, partner_id: str) -> Ownership:
        """Which of a partner's request partitions this worker owns, of how many the
        topic really has (the budget ledger's share of the partner's budgets)."""
        topic = requests_topic(partner_id)  # partitions 0 when not known yet: the
        # ledger holds the partner's requests until it is
        owned = self._owned_by_topic.get(topic, frozenset())
        return Ownership(owned, self._partitions.current(topic) or 0)

    def _set_owned(self, owned: set[tuple[str, int]]) -> None:
        """What this worker owns, and by topic (asked at every request: not a walk
        of 4,000 partitions each time with a thousand partners)."""
        by_topic: defaultdict[str, set[int]] = defaultdict(set)
        self._owned = owned
        for topic, partition in owned:
            by_topic[topic].add(partition)
        self._owned_by_topic = {t: frozenset(ps) for t, ps in by_topic.items()}

    def _on_assigned(self, assigned: set[tuple[str, int]]) -> None:
        """A rebalance ended (handing this worker `assigned`, maybe nothing new):
        ready, once the state log is read to now."""
        # Records wait until what the partitions' previous owners wrote is read.
        self.statelog.resync()
        self._set_owned(self.intake.owned())
        self._partitions.refresh()
        self.dispatcher.on_partitions_assigned(assigned)
        workers = self.intake.members
        self.limiter.set_share(1.0 / max(1, workers))
        share = {"workers": workers, "key_share": self.limiter.share, "owned": len(self._owned)}
        log.info("partitions assigned", extra=share)
        if self._ready_task is not None:
            self._ready_task.cancel()
        self._ready_task = asyncio.ensure_future(self._ready_when_synced())

    async def _ready_when_synced(self) -> None:
        await self.statelog.wait_synced()
        self.lane.adopt(self._owned)  # what their previous owners left, read to now
        self.health.set_ready()

    def _fatal(self, exc: BaseException) -> None:
        log.critical("fatal error: stopping the worker", exc_info=exc)
        self._crash_task = asyncio.ensure_future(self.app.crash(exc))

    async def _refresh_secrets(self) -> None:
        """Secret files are read and re-read here, off the event loop; the hot path
        finds them in the resolver's cache."""
        while True:
            await asyncio.to_thread(self.secrets.refresh)
            await asyncio.sleep(1.0)

    async def _read_secrets(self, partner: Partner) -> None:
        """A partner's secrets into the resolver's cache, and its Anthropic key's SDK
        client made (`ClaudeClient.prepare`), off the event loop."""
        refs = [
            partner.signing_secret_ref,
            partner.previous_signing_secret_ref,
            partner.api_key_ref,
            partner.previous_api_key_ref,
        ]
        for ref in filter(None, refs):
            with contextlib.suppress(SecretError):  # the request that needs it says why
                await asyncio.to_thread(self.secrets.resolve, ref)
        with contextlib.suppress(SecretError):  # resolved just above: from the cache
            await self.claude.prepare(self.api_keys.for_partner(partner))

    def _on_partner_change(
        self, partner_id: str, before: Partner | None, after: Partner | None
    ) -> None:
        if after is not None:
            task = asyncio.ensure_future(self._read_secrets(after))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        if before is not None and after is not None and before.api_key_ref != after.api_key_ref:
            self.dispatcher.on_partner_changed(partner_id)
        if after is not None and before is None:
            self.subscriptions.add(partner_id)

    async def on_start(self) -> None:
        if self.settings.metrics_port >= 0:
            self.metrics_port = self.endpoint.serve(self.settings.metrics_port)
            log.info("metrics listening", extra={"port": self.metrics_port})
        self._heartbeat = asyncio.ensure_future(self.health.heartbeat())
        for partner in self.registry:
            await self._read_secrets(partner)
        self._background.add(asyncio.ensure_future(self._refresh_secrets()))
        self._background.add(asyncio.ensure_future(self.gauges.run()))
        await self.follower.start()
        # Started before the first record: the helper takes a second to import.
        self._background.add(asyncio.ensure_future(self.examiner.start()))
        await self.statelog.start()
        await self.dispatcher.start()
        await self.producer.start()
        # What exists now (modules, Faust, the SDK's types) lives as long as the
        # process: full collections need not walk it again. Measured in the poison
        # benchmark: the worker's full collections paused it 100-110 ms, 6-12 ms
        # with the start-up heap frozen.
        gc.freeze()
        if not self.intake.topics:
            # Nothing to consume until a partner is added (which rebalances).
            self.health.set_ready()
        await self.intake.start()

    async def drain(self) -> None:
        """Stop taking records and let in-flight requests publish, while Kafka is up."""
        self.health.set_not_ready("draining")
        await self.dispatcher.stop(self.settings.shutdown_grace_s)

    async def on_stop(self) -> None:
        self.health.set_not_ready("stopping")
        await self.intake.stop()  # what is done is committed as the group is left
        await self.dispatcher.stop(0)
        await self.producer.stop()
        if self._ready_task is not None:
            self._ready_task.cancel()
        await self.statelog.stop()
        await self.follower.stop()
        for task in self._background:
            task.cancel()
        await self.claude.close()
        self.examiner.close()
        await asyncio.to_thread(self.homes.close)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self.endpoint.close()


class NewPartnerTopics:
    """A partner added while running: create its topics, then add its request
    topic to the subscription (one rebalance for partners added together)."""

    def __init__(self, settings: Settings, codec: Codec, intake: RequestConsumer) -> None:
        self.settings = settings
        self.codec = codec
        self.intake = intake
        self._pending: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, partner_id: str) -> None:
        self._pending.add(partner_id)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._subscribe_new())
            self._task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("cannot subscribe to a new partner's topics", exc_info=task.exception())

    async def _subscribe_new(self) -> None:
        while self._pending:
            new = sorted(self._pending)
            self._pending.clear()
            specs = [s for pid in new for s in partner_topics(self.settings, pid)]
            created = await asyncio.to_thread(ensure_topics, self.settings, specs)
            await asyncio.to_thread(self.codec.warm, output_schemas(new))
            # Topics are never dropped while running: records for a removed
            # partner still get their dead letter (unknown_partner).
            topics = set(self.intake.topics) | {requests_topic(pid) for pid in new}
            if self.intake.subscribe(topics):
                log.info(
                    "subscribing to new partner topics",
                    extra={"partners": new, "created_topics": created},
                )


def build_runtime(settings: Settings, redactor: Redactor | None = None) -> WorkerRuntime:
    """Reach the broker, read the registry, provision topics, and assemble the runtime."""
    redactor = redactor or Redactor()
    parts = Parts(settings, on_secret=redactor.add)
    load_keyring(settings.dlq_keys_ref, parts.secrets.resolve)  # unusable: say so now
    policy = policy_for(settings, parts.secrets.resolve)
    if policy.admin_key is None and settings.profile == "production":
        raise ConfigError(
            "PIPELINE_REGISTRY_KEY is not set: in production, workers apply only registry "
            "records signed with it (see README, Security)"
        )
    parts.reach()
    check_broker_fits(settings)
    codec = parts.codec
    ensure_topics(settings, core_topics(settings))
    registry = load_registry(settings, codec, policy)
    partner_ids = [p.partner_id for p in registry]
    ensure_topics(settings, [s for pid in partner_ids for s in partner_topics(settings, pid)])
    codec.warm(output_schemas(partner_ids))
    return WorkerRuntime(parts, registry, redactor, policy)


def output_schemas(partner_ids: Iterable[str]) -> list[tuple[str, str]]:
    """Every (record, topic) a worker writes, for registering schemas up front."""
    outputs = [("UsageRecord", USAGE_TOPIC), ("DeadLetter", DLQ_TOPIC)]
    outputs.extend(("ClaudeResponse", responses_topic(pid)) for pid in partner_ids)
    return outputs


def run_worker(settings: Settings) -> int:
    claude.preload()  # while the worker connects and joins its group
    loop = eventloop.install(settings.event_loop)  # before Faust makes any loop
    redactor = Redactor(settings.secret_values())
    setup_logging(settings.log_level, redactor)
    runtime = build_runtime(settings, redactor)
    log.info(
        "worker starting",
        extra={
            "bootstrap": settings.bootstrap_servers,
            "profile": settings.profile,
            "event_loop": loop,
            "partners": sorted(p.partner_id for p in runtime.registry),
        },
    )
    worker = PipelineWorker(
        runtime.app,
        runtime,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    worker.spinner = None  # no terminal escape codes in JSON logs
    worker.execute_from_commandline()
    return 0


class PipelineWorker(faust.Worker):
    """Faust's worker, draining our in-flight requests before the app stops.

    Children stop after `on_stop`, so the producer is still up while in-flight
    requests publish their outcomes and their offsets can still be committed.
    """

    async def on_stop(self) -> None:
        for service in self.services:
            if isinstance(service, WorkerRuntime):
                await service.drain()
        await super().on_stop()

    def stop_and_shutdown(self) -> None:
        # Mode exits 1 on an exception here without a word: say what it was.
        try:
            super().stop_and_shutdown()
        except Exception as exc:
            log.critical("worker did not stop cleanly", exc_info=exc)
            raise
