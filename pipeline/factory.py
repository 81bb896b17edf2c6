"""One place that builds the shared parts from `Settings`: the codec (through the
schema registry when one is configured), the secret resolver, the Kafka clients.

The worker and every CLI command build them here, so a setting means the same
thing everywhere: with `SCHEMA_REGISTRY_URL` set, `dlq list`, `usage report`,
`responses`, `send --wait` and `dlq replay` read the Confluent-framed records the
worker writes, exactly as the worker does.

Kafka clients log through our logger (`client_config`), and a broker that cannot
be reached is one clear `BrokerError` within seconds (`Parts.reach`): which
address, which setting to check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from pipeline.config import Settings
from pipeline.errors import BrokerError
from pipeline.schemas import Codec, ConfluentRegistry
from pipeline.security.signing import SecretResolver

#: librdkafka's log lines, routed through logging (JSON in the worker). Commands
#: keep it quiet: an unreachable broker is one line from `reach`, not hundreds.
RDKAFKA_LOG = logging.getLogger("confluent_kafka")

#: How long a command waits for the broker before saying it cannot reach it.
REACH_TIMEOUT_S = 5.0


def client_config(settings: Settings) -> dict[str, Any]:
    """confluent-kafka configuration: connection, security, our logger."""
    return {**settings.kafka_config(), "logger": RDKAFKA_LOG}


def unreachable(settings: Settings, detail: str) -> BrokerError:
    security = (
        f", KAFKA_SECURITY_PROTOCOL={settings.security_protocol}"
        if settings.security_protocol != "PLAINTEXT"
        else ""
    )
    return BrokerError(
        f"cannot reach Kafka at {settings.bootstrap_servers} ({detail}): check "
        f"KAFKA_BOOTSTRAP_SERVERS{security} and that the broker is running"
    )


class Parts:
    """The shared parts of one process, built once from its settings."""

    def __init__(self, settings: Settings, on_secret: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self._on_secret = on_secret

    @cached_property
    def codec(self) -> Codec:
        url = self.settings.schema_registry_url
        return Codec(registry=ConfluentRegistry(url) if url else None)

    @cached_property
    def secrets(self) -> SecretResolver:
        return SecretResolver(self.settings.secret_env(), on_secret=self._on_secret)

    def reach(self, timeout_s: float = REACH_TIMEOUT_S) -> None:
        """Raise one clear BrokerError unless the broker answers within `timeout_s`."""
        admin = AdminClient(client_config(self.settings))
        try:
            admin.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            detail = str(err.str()) if isinstance(err, KafkaError) else str(exc)
            raise unreachable(self.settings, f"no answer in {timeout_s:.0f} s: {detail}") from None


#: The cluster id Tansu (the embedded broker) reports.
TANSU_CLUSTER_ID = "tansu_cluster"


def broker_configs(admin: AdminClient, timeout_s: float = REACH_TIMEOUT_S) -> dict[str, str] | None:
    """One broker's configuration as DescribeConfigs gives it; None when it cannot
    be read (no permission: nothing to judge by)."""
    from confluent_kafka.admin import ConfigResource, ResourceType  # type: ignore[attr-defined]

    try:
        metadata = admin.list_topics(timeout=timeout_s)
        broker = ConfigResource(ResourceType.BROKER, str(next(iter(metadata.brokers))))
        (future,) = admin.describe_configs([broker], request_timeout=timeout_s).values()
        entries = future.result(timeout=timeout_s)
    except (KafkaException, StopIteration, TimeoutError):
        return None
    return {name: str(entry.value) for name, entry in entries.items() if entry.value is not None}


def check_broker_fits(settings: Settings, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Say in one line what the broker lacks that the settings need (a ConfigError),
    before the worker's clients fail at it deep inside a traceback or a join that
    never ends: idempotent producers on the embedded broker, a session timeout
    outside the broker's bounds."""
    from pipeline.errors import ConfigError

    admin = AdminClient(client_config(settings))
    try:
        cluster_id = admin.list_topics(timeout=timeout_s).cluster_id
    except KafkaException:
        return  # `reach` says it cannot reach the broker
    configs = broker_configs(admin, timeout_s)
    embedded = cluster_id == TANSU_CLUSTER_ID or configs == {}
    if embedded and settings.broker_profile.idempotent_producers:
        raise ConfigError(
            "this broker is the embedded one (Tansu), which has no idempotent producers "
            f"(InitProducerId) that the {settings.profile} profile uses: set "
            "PIPELINE_PROFILE=dev (or PIPELINE_BROKER=embedded)"
        )
    session_ms = int(settings.timings.session_timeout_s * 1000)
    least = int((configs or {}).get("group.min.session.timeout.ms", 0))
    most = int((configs or {}).get("group.max.session.timeout.ms", 0)) or None
    if session_ms < least or (most is not None and session_ms > most):
        raise ConfigError(
            f"the {settings.profile} profile's {session_ms} ms consumer session is outside "
            f"this broker's group.min/max.session.timeout.ms ({least}-{most} ms), so the "
            "worker could never join its group: "
            + (
                "set PIPELINE_PROFILE=production (the dev profile is for the embedded broker)"
                if settings.profile == "dev"
                else "ask for the broker's bounds to include it"
            )
        )
