"""Follow the compacted `claude.partners` topic into the worker's registry.

Every worker reads every partition from the beginning (it is configuration,
not work to share), outside the consumer group, and keeps following it: a
`partners disable` reaches every running worker within a poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.config import Settings
from pipeline.errors import ConfigError, SchemaError
from pipeline.kafka import read_topics
from pipeline.partners import PARTNERS_TOPIC, Partner, Registry
from pipeline.schemas import Codec

log = logging.getLogger("pipeline.follower")


def decode_partner(
    codec: Codec, key: bytes | None, value: bytes | None
) -> tuple[str, Partner | None]:
    """(partner_id, config or None for a tombstone); raises on a corrupt record."""
    if value is None:
        if not key:
            raise SchemaError("tombstone without a key")
        return key.decode("utf-8", "replace"), None
    partner = Partner.from_record(codec.decode("PartnerConfig", value))
    return partner.partner_id, partner


def load_registry(settings: Settings, codec: Codec) -> Registry:
    """The registry as the topic says now (synchronous, for start-up)."""
    registry = Registry()
    for msg in read_topics(settings, [PARTNERS_TOPIC]):
        try:
            pid, partner = decode_partner(codec, msg.key(), msg.value())
        except (SchemaError, ConfigError) as exc:
            log.warning(
                "skipping a bad partner record", extra={"offset": msg.offset(), "error": str(exc)}
            )
            continue
        registry.apply(pid, partner)
    return registry


class PartnerFollower:
    def __init__(
        self,
        settings: Settings,
        codec: Codec,
        registry: Registry,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._settings = settings
        self._codec = codec
        self._registry = registry
        self._on_error = on_error
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            **self._settings.aiokafka_config(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self._settings.broker_profile.fetch_max_wait_ms,
        )
        await consumer.start()
        partitions = consumer.partitions_for_topic(PARTNERS_TOPIC) or {0}
        consumer.assign([TopicPartition(PARTNERS_TOPIC, p) for p in sorted(partitions)])
        await consumer.seek_to_beginning()
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow(), name="partner-follower")
        self._task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("partner follower died", exc_info=exc)
            if self._on_error is not None and exc is not None:
                self._on_error(exc)

    async def _follow(self) -> None:
        assert self._consumer is not None  # noqa: S101 (start() sets it)
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    self._apply(record.key, record.value, record.offset)

    def _apply(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        try:
            pid, partner = decode_partner(self._codec, key, value)
        except (SchemaError, ConfigError) as exc:
            log.exception(
                "skipping a bad partner record", extra={"offset": offset, "error": str(exc)}
            )
            return
        before = self._registry.get(pid)
        self._registry.apply(pid, partner)
        if before != partner:
            log.info(
                "partner updated",
                extra={
                    "partner": pid,
                    "enabled": None if partner is None else partner.enabled,
                    "removed": partner is None,
                },
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
