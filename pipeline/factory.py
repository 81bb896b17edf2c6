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
from pipeline.security import SecretResolver

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
