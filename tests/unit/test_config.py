from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.errors import ConfigError


def test_defaults_follow_the_contract() -> None:
    s = Settings.from_env({})
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert s.partners_file == Path("partners.toml")
    assert s.metrics_port == 9464
    assert s.anthropic_api_key is None
    assert s.schema_registry_url is None
    assert s.profile == "production"
    assert s.event_loop == "uvloop"
    # production stays valid on real Kafka (group.min.session.timeout.ms = 6 s)
    assert s.timings.session_timeout_s >= 6.0


def test_environment_overrides() -> None:
    s = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
            "ANTHROPIC_API_KEY": "sk-ant-xyz",
            "PIPELINE_METRICS_PORT": "9999",
            "PIPELINE_PROFILE": "dev",
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD": "p",
        }
    )
    assert s.metrics_port == 9999
    assert s.timings.session_timeout_s == 2.0
    conf = s.kafka_config()
    assert conf["bootstrap.servers"] == "k1:9092,k2:9092"
    assert conf["sasl.mechanisms"] == "SCRAM-SHA-512"
    assert s.aiokafka_config()["bootstrap_servers"] == ["k1:9092", "k2:9092"]
    assert "sk-ant-xyz" not in repr(s)
    assert "'p'" not in repr(s)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"PIPELINE_METRICS_PORT": "lots"}, "PIPELINE_METRICS_PORT must be a number"),
        ({"PIPELINE_PROFILE": "turbo"}, "PIPELINE_PROFILE"),
        ({"PIPELINE_MAX_IN_FLIGHT": "0"}, "max_in_flight"),
        ({"PIPELINE_EVENT_LOOP": "trio"}, "PIPELINE_EVENT_LOOP must be one of uvloop, asyncio"),
    ],
)
def test_bad_values_are_config_errors(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env(env)


def test_the_event_loop_choice_is_installed_for_every_new_loop() -> None:
    import asyncio

    import uvloop

    from pipeline import eventloop

    assert Settings.from_env({"PIPELINE_EVENT_LOOP": " AsyncIO "}).event_loop == "asyncio"
    try:
        assert eventloop.install("uvloop") == "uvloop"
        loop = asyncio.new_event_loop()  # as Faust's consumer thread makes its own
        assert isinstance(loop, uvloop.Loop)
        loop.close()
        assert eventloop.install("asyncio") == "asyncio"
        loop = asyncio.new_event_loop()
        assert not isinstance(loop, uvloop.Loop)
        loop.close()
    finally:
        asyncio.set_event_loop_policy(None)


def test_the_fetch_wait_overrides_the_broker_profile_and_only_it() -> None:
    dev = Settings.from_env({"PIPELINE_PROFILE": "dev"})
    assert dev.broker_profile.fetch_max_wait_ms == 10  # the embedded broker's
    short = Settings.from_env({"PIPELINE_PROFILE": "dev", "PIPELINE_FETCH_MAX_WAIT_MS": "1"})
    assert short.broker_profile.fetch_max_wait_ms == 1
    assert short.broker_profile.idempotent_producers is False  # still the embedded broker
    # the state log and the registry follower keep theirs: on the embedded
    # broker their fetches slow everyone's the more the state log holds
    assert dev.broker_profile.follow_fetch_wait_ms == 100
    assert short.broker_profile.follow_fetch_wait_ms == 100
    kafka = Settings.from_env({"PIPELINE_FETCH_MAX_WAIT_MS": "100"})
    assert kafka.broker_profile.fetch_max_wait_ms == 100
    assert kafka.broker_profile.idempotent_producers is True
    for bad in ("-1", "600000", "soon"):
        with pytest.raises(ConfigError, match="PIPELINE_FETCH_MAX_WAIT_MS"):
            Settings.from_env({"PIPELINE_FETCH_MAX_WAIT_MS": bad})


def test_transactions_follow_the_broker_unless_set() -> None:
    assert Settings.from_env({}).transactional  # Apache Kafka: outcome + marker commit together
    assert not Settings.from_env({"PIPELINE_PROFILE": "dev"}).transactional  # Tansu has none
    assert not Settings.from_env({"PIPELINE_TRANSACTIONS": "off"}).transactional
    with pytest.raises(ConfigError, match=r"^PIPELINE_TRANSACTIONS=on needs a broker with tr"):
        Settings.from_env({"PIPELINE_PROFILE": "dev", "PIPELINE_TRANSACTIONS": "on"})
    with pytest.raises(ConfigError, match=r"^PIPELINE_TRANSACTIONS must be on or off"):
        Settings.from_env({"PIPELINE_TRANSACTIONS": "maybe"})


def test_the_request_consumers_fetch_wait_grows_with_its_partitions_only_on_tansu() -> None:
    from pipeline.kafka.consumer import consumer_config, fetch_wait_ms

    dev = Settings.from_env({"PIPELINE_PROFILE": "dev"})
    # Tansu returns the partitions it has not read within the wait empty, always
    # in the same order: 4,000 at 10 ms left some partners never served
    assert fetch_wait_ms(dev, 40) == 10  # ten partners: the profile's
    assert fetch_wait_ms(dev, 4_000) == 100  # a thousand: 25 us a partition
    assert consumer_config(dev, 4_000)["fetch.wait.max.ms"] == 100
    kafka = Settings.from_env({})
    assert fetch_wait_ms(kafka, 4_000) == 500  # Kafka reads every partition: no change
    chosen = Settings.from_env({"PIPELINE_PROFILE": "dev", "PIPELINE_FETCH_MAX_WAIT_MS": "5"})
    assert fetch_wait_ms(chosen, 4_000) == 5  # an explicit wait is taken as it is
