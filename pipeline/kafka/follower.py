"""Follow the compacted `claude.partners` topic into the worker's registry.

Every worker reads every partition from the beginning (it is configuration,
not work to share), outside the consumer group, and keeps following it: a
`partners disable` reaches every running worker within a poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.config import Settings
from pipeline.errors import AuthFailed, ConfigError, SchemaError
from pipeline.kafka.clients import read_topics
from pipeline.partners import PARTNERS_TOPIC, Partner, Registry
from pipeline.schemas import Codec
from pipeline.security.registryauth import RegistryPolicy

log = logging.getLogger("pipeline.kafka.follower")


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


def admit_partner(
    codec: Codec,
    policy: RegistryPolicy,
    registry: Registry,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]] | None,
) -> tuple[str, Partner | None, int]:
    """Decode and check one registry record: (partner_id, config or None, the
    record's signed timestamp); raises if it must not be applied."""
    pid, partner = decode_partner(codec, key, value)
    timestamp_ms = policy.admit(
        key, value, list(headers or ()), partner, registry.partners, registry.removed
    )
    return pid, partner, timestamp_ms


def apply_record(
    codec: Codec,
    policy: RegistryPolicy,
    registry: Registry,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]] | None,
    offset: int,
    ignored: Callable[[], None] | None = None,
) -> bool:
    """Apply one registry record, or log and skip it: whatever a record holds,
    it never stops the follower (and so every worker, at run time and at start)."""
    try:
        pid, partner, timestamp_ms = admit_partner(codec, policy, registry, key, value, headers)
    except (SchemaError, ConfigError, AuthFailed) as exc:
        log.warning("ignoring a partner record", extra={"offset": offset, "error": str(exc)})
    except Exception as exc:
        log.exception(
            "ignoring a partner record nothing else refused (a bug: please report it)",
            exc_info=exc,
            extra={"offset": offset, "error": type(exc).__name__},
        )
    else:
        registry.apply(pid, partner, timestamp_ms)
        return True
    if ignored is not None:
        ignored()
    return False


def _headers(raw: object) -> list[tuple[str, bytes]]:
    """confluent-kafka's headers (a list of pairs, values possibly None) as bytes pairs."""
    pairs = raw.items() if isinstance(raw, dict) else (raw or [])
    out = []
    for name, value in pairs:  # type: ignore[attr-defined]
        if isinstance(value, str):
            value = value.encode()
        out.append((str(name), value or b""))
    return out


def load_registry(
    settings: Settings, codec: Codec, policy: RegistryPolicy | None = None
) -> Registry:
    """The registry as the topic says now (synchronous, for start-up)."""
    policy = policy or RegistryPolicy(None)
    registry = Registry()
    # under the worker's group id: the one its ACLs grant (it never joins or commits)
    for msg in read_topics(settings, [PARTNERS_TOPIC], group_id=settings.group_id):
        apply_record(
            codec,
            policy,
            registry,
            msg.key(),
            msg.value(),
            _headers(msg.headers()),
            msg.offset() or 0,
        )
    return registry


class PartnerFollower:
    def __init__(
        self,
        settings: Settings,
        codec: Codec,
        registry: Registry,
        on_error: Callable[[BaseException], None] | None = None,
        policy: RegistryPolicy | None = None,
        ignored: Callable[[], None] | None = None,
    ) -> None:
        self._ignored = ignored
        self._policy = policy or RegistryPolicy(None)
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
            fetch_max_wait_ms=self._settings.broker_profile.follow_fetch_wait_ms,
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
                    self._apply(record.key, record.value, record.offset, record.headers)

    def _apply(
        self,
        key: bytes | None,
        value: bytes | None,
        offset: int,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        pid = key.decode("utf-8", "replace") if key else ""
        before = self._registry.get(pid)
        if not apply_record(
            self._codec, self._policy, self._registry, key, value, headers, offset, self._ignored
        ):
            return
        after = self._registry.get(pid)
        if before != after:
            log.info(
                "partner updated",
                extra={
                    "partner": pid,
                    "enabled": None if after is None else after.enabled,
                    "removed": after is None,
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
