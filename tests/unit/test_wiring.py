"""The wiring modules on their own: topics, the partner follower's decoding, the app."""

from __future__ import annotations

import pytest

from pipeline.config import Settings
from pipeline.errors import ConfigError, SchemaError
from pipeline.kafka.app import create_app
from pipeline.kafka.clients import core_topics, partner_topics
from pipeline.kafka.follower import decode_partner
from pipeline.partners import Partner
from pipeline.schemas import Codec
from pipeline.worker import output_schemas

SETTINGS = Settings(topic_partitions=6, max_record_bytes=2 * 1024 * 1024)


def test_topics_carry_the_record_limit_and_the_registry_is_compacted() -> None:
    core = {t.name: t for t in core_topics(SETTINGS)}
    assert core["claude.partners"].partitions == 1
    assert core["claude.partners"].config == {"cleanup.policy": "compact"}
    assert core["claude.dlq"].config["max.message.bytes"] == str(SETTINGS.max_message_bytes)
    for topic in partner_topics(SETTINGS, "acme"):
        assert topic.partitions == 6
        assert int(topic.config["max.message.bytes"]) > SETTINGS.max_record_bytes


def test_the_follower_decodes_updates_and_tombstones_and_refuses_garbage() -> None:
    codec = Codec()
    partner = Partner("acme", "env:ACME_SECRET", weight=3)
    value = codec.encode("PartnerConfig", partner.to_record())
    assert decode_partner(codec, b"acme", value) == ("acme", partner)
    assert decode_partner(codec, b"acme", None) == ("acme", None)
    with pytest.raises(SchemaError):
        decode_partner(codec, None, None)
    with pytest.raises(SchemaError):
        decode_partner(codec, b"acme", b"\xc3\x01garbage")
    bad = codec.encode("PartnerConfig", {**partner.to_record(), "weight": 0})
    with pytest.raises(ConfigError):
        decode_partner(codec, b"acme", bad)


def test_the_worker_registers_every_output_schema() -> None:
    outputs = output_schemas(["a", "b"])
    assert ("UsageRecord", "claude.usage") in outputs
    assert ("DeadLetter", "claude.dlq") in outputs
    assert ("ClaudeResponse", "claude.responses.b") in outputs


def test_the_faust_frame_starts_no_kafka_client_of_its_own() -> None:
    # Requests are consumed and produced on librdkafka (pipeline/kafka/consumer.py,
    # producer.py): Faust's consumer, producer and conductor must not join the group.
    app = create_app(SETTINGS)
    services = list(app.boot_strategy.server())
    assert [type(s).__name__ for s in services] == ["AgentManager"]
    assert not app.agents
    assert not app.tables
