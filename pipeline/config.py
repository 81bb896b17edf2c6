"""One frozen `Settings` object. Nothing else in the package reads `os.environ`.

Two profiles: `production` (the default) keeps Kafka-valid timings; `dev` is for
the embedded Tansu broker, whose consumer-group join waits session-timeout/2,
so a 2 s session makes a worker ready in about 3 s instead of 5.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline import eventloop, failpoints
from pipeline.errors import ConfigError

PROFILES = ("production", "dev")
BROKERS = ("kafka", "embedded")


@dataclass(frozen=True)
class BrokerProfile:
    """What the broker needs worked around. Real Kafka (and Confluent Cloud, MSK,
    Redpanda) needs nothing; the embedded broker (Tansu) needs two things,
    each measured here (see README, "The embedded broker and its limits")."""

    #: Producers may use idempotence (Tansu lacks InitProducerId).
    idempotent_producers: bool
    #: How long a fetch may wait for data. Kafka answers a waiting fetch as soon as
    #: data arrives; Tansu waits the whole time (measured: 722 ms of Faust's 1,500).
    fetch_max_wait_ms: int
    #: The same for the state log's and the registry follower's consumers, which
    #: nothing waits on while requests are served. Tansu's fetches cost more the
    #: more batches a partition holds, and the state log gains one per request:
    #: at the request consumer's 1-10 ms these fetches slowed every other
    #: (`bench latency`, short waits: `kafka_ms` in the run's last fifth 12.7 ->
    #: 7.6 ms at 100 ms). On Kafka they are answered when data arrives anyway.
    follow_fetch_wait_ms: int
    #: A request's outcome and its done marker are written in one transaction
    #: (pipeline/kafka/statelog.py); Tansu has no transactions.
    transactions: bool = False
    #: Tansu reads a fetch's partitions one after another and stops at its
    #: max-wait: the ones it has not reached come back empty, every time, in
    #: the same order (a partner among a thousand, 4,000 partitions, was never
    #: served at 10 ms; the read took 30-50 ms idle). The request consumer's
    #: wait grows by this per partition it may be assigned (`fetch_wait_ms`).
    fetch_read_us_per_partition: float = 0.0
    #: Tansu keeps a member that leaves while its group join is under way as the
    #: group's leader, and every member after it waits for that leader's
    #: assignment forever (SyncGroup: REBALANCE_IN_PROGRESS, seen when a worker
    #: was stopped 0.6 s after it started). A worker stopped mid-join finishes
    #: the join first (at most twice the session timeout), then leaves.
    finish_join_before_leaving: bool = False


BROKER_PROFILES = {
    "kafka": BrokerProfile(
        idempotent_producers=True,
        fetch_max_wait_ms=500,
        follow_fetch_wait_ms=500,
        transactions=True,
    ),
    "embedded": BrokerProfile(
        idempotent_producers=False,
        fetch_max_wait_ms=10,
        follow_fetch_wait_ms=100,
        fetch_read_us_per_partition=25.0,
        finish_join_before_leaving=True,
    ),
}


@dataclass(frozen=True)
class Timings:
    session_timeout_s: float
    heartbeat_interval_s: float
    commit_interval_s: float
    #: How long a fetch may wait for data. Kafka answers a waiting fetch as soon
    #: as data arrives; Tansu waits the whole time (measured: 722 ms of Faust's
    #: hard-coded 1,500), so the dev profile keeps it short.
    fetch_max_wait_ms: int


_TIMINGS = {
    # Real Kafka refuses sessions under 6 s (group.min.session.timeout.ms).
    "production": Timings(10.0, 3.0, 2.0, 500),
    "dev": Timings(2.0, 0.5, 0.5, 10),
}


@dataclass(frozen=True)
class BatchSettings:
    """The batch lane: a batch closes at `max_requests` or `max_wait_s` after its
    first request; a submitted batch is polled after `poll_s`, then 1.5x longer
    each time up to a minute."""

    max_requests: int = 10_000
    max_wait_s: float = 60.0
    poll_s: float = 5.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_requests <= 100_000:
            raise ConfigError(
                "PIPELINE_BATCH_MAX_REQUESTS must be within 1-100000 (the API's limit)"
            )
        if not 0 < self.max_wait_s <= 86_400:
            raise ConfigError("PIPELINE_BATCH_MAX_WAIT_S must be within 0-86400 (seconds)")
        if not 0 < self.poll_s <= 3600:
            raise ConfigError("PIPELINE_BATCH_POLL_S must be within 0-3600 (seconds)")

    @classmethod
    def read(cls, number: Callable[[str, Any, Any], Any]) -> BatchSettings:
        d = cls()
        return cls(
            number("PIPELINE_BATCH_MAX_REQUESTS", int, d.max_requests),
            number("PIPELINE_BATCH_MAX_WAIT_S", float, d.max_wait_s),
            number("PIPELINE_BATCH_POLL_S", float, d.poll_s),
        )


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = "127.0.0.1:9092"
    anthropic_api_key: str | None = field(default=None, repr=False)
    anthropic_base_url: str | None = None
    partners_file: Path = Path("partners.toml")
    metrics_port: int = 9464
    schema_registry_url: str | None = None
    profile: str = "production"
    #: "kafka" or "embedded" (Tansu); None: embedded with the dev profile, else kafka.
    broker: str | None = None
    #: Overrides the broker profile's fetch max-wait. On a broker that holds every
    #: fetch for its whole max-wait (Tansu), lower is lower latency for more CPU.
    fetch_max_wait_ms: int | None = None
    group_id: str = "claude-pipeline"
    # Kafka client security, for Confluent Cloud, MSK and friends.
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_location: str | None = None
    # Worker behaviour.
    max_in_flight: int = 256
    max_queued_per_partner: int = 256
    max_attempts: int = 5
    batch: BatchSettings = field(default_factory=lambda: BatchSettings())
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    upstream_timeout_s: float = 600.0
    signature_max_age_s: float = 300.0
    max_replays: int = 3
    #: A secret reference (env:/file:) to the dead-letter keyring (pipeline/security/sealing.py).
    dlq_keys_ref: str | None = None
    #: A secret reference to the key that signs registry records
    #: (pipeline/security/registryauth.py).
    registry_key_ref: str | None = None
    #: Where partners' secret references may point (comma-separated prefixes).
    partner_secrets: str | None = None
    topic_partitions: int = 4
    replication_factor: int = 1
    log_level: str = "INFO"
    #: "uvloop" (faster, the default) or "asyncio"; see pipeline/eventloop.py.
    event_loop: str = "uvloop"
    #: On SIGTERM, how long in-flight requests may take to finish and publish.
    shutdown_grace_s: float = 10.0
    #: The upstream key's limits; None learns them from Claude's headers.
    upstream_rpm: int | None = None
    upstream_itpm: int | None = None
    upstream_otpm: int | None = None
    #: While Claude reports this fraction of a key's bucket left, a worker may
    #: borrow beyond its 1/N share.
    limit_slack: float = 0.5
    #: A TOML price table overriding/extending the built-in one.
    prices_file: Path | None = None
    #: Override the profile's offset commit interval (tests use a long one).
    commit_interval_s: float | None = None
    #: The largest record value the pipeline reads or writes. The Messages API
    #: takes requests up to 32 MB (images and PDFs make them large); topics the
    #: pipeline creates, its producers and its consumers are configured to match.
    max_record_bytes: int = 32 * 1024 * 1024
    #: Test-only: die like kill -9 at a chosen point (pipeline/failpoints.py).
    failpoints: str | None = None
    #: How often each partner's Kafka backlog is measured (pipeline/kafka/lag.py).
    backlog_interval_s: float = 15.0
    #: Outcomes and done markers in transactions; None: as the broker profile says.
    transactions: bool | None = None

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"PIPELINE_PROFILE must be one of {', '.join(PROFILES)}")
        if self.broker is not None and self.broker not in BROKERS:
            raise ConfigError(f"PIPELINE_BROKER must be one of {', '.join(BROKERS)}")
        failpoints.parse(self.failpoints)  # a typo is an error, not a silent no-op
        if self.max_record_bytes < 1024:
            raise ConfigError("PIPELINE_MAX_RECORD_BYTES must be at least 1024")
        for name in ("max_in_flight", "max_queued_per_partner", "max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if not self.bootstrap_servers.strip():
            raise ConfigError("KAFKA_BOOTSTRAP_SERVERS is empty")
        if self.fetch_max_wait_ms is not None and not 0 <= self.fetch_max_wait_ms <= 60_000:
            raise ConfigError("PIPELINE_FETCH_MAX_WAIT_MS must be within 0-60000")
        if self.transactions and not self.broker_profile.idempotent_producers:
            raise ConfigError(
                "PIPELINE_TRANSACTIONS=on needs a broker with transactions (Apache Kafka, "
                "Confluent Cloud, MSK, Redpanda); the embedded broker has none: unset it"
            )

    @property
    def upstream_limits(self) -> dict[str, int | None]:
        return {
            "requests": self.upstream_rpm,
            "input_tokens": self.upstream_itpm,
            "output_tokens": self.upstream_otpm,
        }

    @property
    def broker_profile(self) -> BrokerProfile:
        broker = self.broker or ("embedded" if self.profile == "dev" else "kafka")
        profile = BROKER_PROFILES[broker]
        if self.fetch_max_wait_ms is not None:
            return replace(profile, fetch_max_wait_ms=self.fetch_max_wait_ms)
        return profile

    @property
    def transactional(self) -> bool:
        if self.transactions is not None:
            return self.transactions
        return self.broker_profile.transactions

    @property
    def max_message_bytes(self) -> int:
        """What a topic and a producer request must allow for one record of
        `max_record_bytes`: its key, headers and the record batch around it too."""
        return self.max_record_bytes + 64 * 1024

    @property
    def timings(self) -> Timings:
        base = _TIMINGS[self.profile]
        if self.commit_interval_s is not None:
            return replace(base, commit_interval_s=self.commit_interval_s)
        return base

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    # -- Kafka client configurations ---------------------------------------

    def kafka_config(self) -> dict[str, str]:
        """Configuration for confluent-kafka clients (CLI tools, admin)."""
        conf = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanisms"] = self.sasl_mechanism
        if self.sasl_username is not None:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        return conf

    def aiokafka_config(self) -> dict[str, Any]:
        """The same, for aiokafka (the transport Faust uses)."""
        conf: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl_mechanism"] = self.sasl_mechanism
            conf["sasl_plain_username"] = self.sasl_username
            conf["sasl_plain_password"] = self.sasl_password
        if "SSL" in self.security_protocol:
            import ssl

            conf["ssl_context"] = ssl.create_default_context(cafile=self.ssl_ca_location)
        return conf

    # -- construction --------------------------------------------------------

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def text(name: str) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else None

        def number(name: str, kind: type[int] | type[float], default: Any) -> Any:
            raw = text(name)
            if raw is None:
                return default
            try:
                return kind(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {raw!r}") from None

        def loop_choice() -> str:
            try:
                return eventloop.parse(text("PIPELINE_EVENT_LOOP"))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None

        d = cls()
        return cls(
            bootstrap_servers=text("KAFKA_BOOTSTRAP_SERVERS") or d.bootstrap_servers,
            anthropic_api_key=text("ANTHROPIC_API_KEY"),
            anthropic_base_url=text("ANTHROPIC_BASE_URL"),
            partners_file=Path(text("PIPELINE_PARTNERS_FILE") or d.partners_file),
            metrics_port=number("PIPELINE_METRICS_PORT", int, d.metrics_port),
            schema_registry_url=text("SCHEMA_REGISTRY_URL"),
            profile=text("PIPELINE_PROFILE") or d.profile,
            broker=text("PIPELINE_BROKER"),
            fetch_max_wait_ms=number("PIPELINE_FETCH_MAX_WAIT_MS", int, None),
            group_id=text("PIPELINE_GROUP_ID") or d.group_id,
            security_protocol=text("KAFKA_SECURITY_PROTOCOL") or d.security_protocol,
            sasl_mechanism=text("KAFKA_SASL_MECHANISM"),
            sasl_username=text("KAFKA_SASL_USERNAME"),
            sasl_password=text("KAFKA_SASL_PASSWORD"),
            ssl_ca_location=text("KAFKA_SSL_CA_LOCATION"),
            max_in_flight=number("PIPELINE_MAX_IN_FLIGHT", int, d.max_in_flight),
            max_queued_per_partner=number(
                "PIPELINE_MAX_QUEUED_PER_PARTNER", int, d.max_queued_per_partner
            ),
            max_attempts=number("PIPELINE_MAX_ATTEMPTS", int, d.max_attempts),
            batch=BatchSettings.read(number),
            backoff_base_s=number("PIPELINE_BACKOFF_BASE_S", float, d.backoff_base_s),
            backoff_cap_s=number("PIPELINE_BACKOFF_CAP_S", float, d.backoff_cap_s),
            upstream_timeout_s=number("PIPELINE_UPSTREAM_TIMEOUT_S", float, d.upstream_timeout_s),
            signature_max_age_s=number(
                "PIPELINE_SIGNATURE_MAX_AGE_S", float, d.signature_max_age_s
            ),
            max_replays=number("PIPELINE_DLQ_MAX_REPLAYS", int, d.max_replays),
            dlq_keys_ref=text("PIPELINE_DLQ_KEYS"),
            registry_key_ref=text("PIPELINE_REGISTRY_KEY"),
            partner_secrets=text("PIPELINE_PARTNER_SECRETS"),
            topic_partitions=number("PIPELINE_TOPIC_PARTITIONS", int, d.topic_partitions),
            replication_factor=number("PIPELINE_REPLICATION_FACTOR", int, d.replication_factor),
            log_level=(text("PIPELINE_LOG_LEVEL") or d.log_level).upper(),
            event_loop=loop_choice(),
            shutdown_grace_s=number("PIPELINE_SHUTDOWN_GRACE_S", float, d.shutdown_grace_s),
            upstream_rpm=number("PIPELINE_UPSTREAM_RPM", int, None) or None,
            upstream_itpm=number("PIPELINE_UPSTREAM_ITPM", int, None) or None,
            upstream_otpm=number("PIPELINE_UPSTREAM_OTPM", int, None) or None,
            limit_slack=number("PIPELINE_LIMIT_SLACK", float, d.limit_slack),
            prices_file=Path(p) if (p := text("PIPELINE_PRICES_FILE")) else None,
            commit_interval_s=number("PIPELINE_COMMIT_INTERVAL_S", float, None),
            max_record_bytes=number("PIPELINE_MAX_RECORD_BYTES", int, d.max_record_bytes),
            backlog_interval_s=number("PIPELINE_BACKLOG_INTERVAL_S", float, d.backlog_interval_s),
            failpoints=text("PIPELINE_FAILPOINTS"),
            transactions=_switch("PIPELINE_TRANSACTIONS", text("PIPELINE_TRANSACTIONS")),
        )

    def secret_values(self) -> list[str]:
        """Every secret the settings hold, for the log redactor (secrets a partner's
        reference points at are added as they are read)."""
        from urllib.parse import urlsplit

        values = [self.anthropic_api_key, self.sasl_password]
        if self.schema_registry_url:
            values.append(urlsplit(self.schema_registry_url).password)
        return [v for v in values if v]

    def secret_env(self) -> Mapping[str, str]:
        """The process environment, for resolving `env:NAME` secret references."""
        return os.environ


def _switch(name: str, raw: str | None) -> bool | None:
    """An on/off setting (None when unset)."""
    if raw is None:
        return None
    if raw.lower() in ("on", "true", "1", "yes"):
        return True
    if raw.lower() in ("off", "false", "0", "no"):
        return False
    raise ConfigError(f"{name} must be on or off, got {raw!r}")
