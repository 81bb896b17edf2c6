"""The wiring modules on their own: topics, the partner follower's decoding, the app."""

from __future__ import annotations

from typing import Any, cast

import pytest

from pipeline.config import Settings
from pipeline.errors import ConfigError, SchemaError
from pipeline.kafka.app import RequestTopics, create_app
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


async def test_the_app_subscribes_its_agent_to_request_topics_that_follow_the_registry() -> None:
    async def handler(record: Any, ack: Any) -> None:
        pass

    wiring = create_app(SETTINGS, handler=handler, request_topics=["claude.requests.a"])
    try:
        assert wiring.request_topics() == ["claude.requests.a"]
        assert "pipeline.requests" in wiring.app.agents
        assert not wiring.app.tables  # our state is in the state log, not in Faust tables
        assert wiring.set_request_topics(["claude.requests.b", "claude.requests.a"])
        assert not wiring.set_request_topics(["claude.requests.a", "claude.requests.b"])
        channels = [c for c in wiring.app.topics if isinstance(c, RequestTopics)]
        assert all(sorted(c.topics) == ["claude.requests.a", "claude.requests.b"] for c in channels)
    finally:
        cast(Any, wiring.app.consumer)._thread.thread_loop.close()  # never started


async def test_a_subscription_change_lost_in_a_rebalance_is_asked_again(monkeypatch: Any) -> None:
    # Faust's conductor drops a change flagged while the app rebalances.
    import asyncio

    from pipeline.kafka import faustadapter

    async def handler(record: Any, ack: Any) -> None:
        pass

    wiring = create_app(SETTINGS, handler=handler, request_topics=["claude.requests.a"])
    subscribed = {"claude.requests.a"}
    flags: list[str] = []
    flagged = asyncio.Event()

    def flag() -> None:
        flags.append("flagged")
        flagged.set()

    monkeypatch.setattr(faustadapter, "subscribed_topics", lambda app: frozenset(subscribed))
    monkeypatch.setattr(wiring, "_flag_subscription", flag)
    try:
        wiring.requests.topics = ["claude.requests.a", "claude.requests.b"]
        wiring.app.rebalancing = True
        waiting = asyncio.ensure_future(wiring.until_subscribed(patience_s=0.05, poll_s=0.01))
        await asyncio.sleep(0.2)
        assert flags == []  # never while it rebalances: the change would be dropped again
        wiring.app.rebalancing = False
        async with asyncio.timeout(5):
            await flagged.wait()
        assert not waiting.done()
        subscribed.add("claude.requests.b")
        async with asyncio.timeout(5):
            await waiting
        assert flags == ["flagged"]
    finally:
        cast(Any, wiring.app.consumer)._thread.thread_loop.close()  # never started


async def test_a_change_missing_when_a_rebalance_ends_is_asked_again_at_once(
    monkeypatch: Any,
) -> None:
    # A partner added during another partner's rebalance: waiting the whole
    # patience after the rebalance cost it 2-4 s more before it was consumed.
    import asyncio
    import contextlib

    from pipeline.kafka import faustadapter

    async def handler(record: Any, ack: Any) -> None:
        pass

    wiring = create_app(SETTINGS, handler=handler, request_topics=["claude.requests.a"])
    flagged = asyncio.Event()
    monkeypatch.setattr(
        faustadapter, "subscribed_topics", lambda app: frozenset({"claude.requests.a"})
    )
    monkeypatch.setattr(wiring, "_flag_subscription", flagged.set)
    try:
        wiring.requests.topics = ["claude.requests.a", "claude.requests.b"]
        wiring.app.rebalancing = True
        waiting = asyncio.ensure_future(wiring.until_subscribed(patience_s=30.0, poll_s=0.01))
        await asyncio.sleep(0.1)
        assert not flagged.is_set()
        wiring.app.rebalancing = False
        async with asyncio.timeout(1):  # not after the 30 s patience
            await flagged.wait()
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    finally:
        cast(Any, wiring.app.consumer)._thread.thread_loop.close()  # never started


async def test_an_unchanged_subscription_does_not_rejoin_the_group(monkeypatch: Any) -> None:
    from faust.transport.drivers import aiokafka as driver

    from pipeline.kafka import faustadapter

    async def handler(record: Any, ack: Any) -> None:
        pass

    subscribed: set[str] = set()

    async def subscribe(self: Any, topics: Any) -> None:  # aiokafka: rejoin every time
        subscribed.clear()
        subscribed.update(topics)
        calls.append(sorted(topics))

    calls: list[list[str]] = []
    monkeypatch.setattr(driver.Consumer, "subscribe", subscribe)
    monkeypatch.setattr(faustadapter, "subscribed_topics", lambda app: frozenset(subscribed))
    wiring = create_app(SETTINGS, handler=handler, request_topics=["claude.requests.a"])
    try:
        consumer: Any = wiring.app.consumer
        await consumer.subscribe(["claude.requests.a"])
        await consumer.subscribe(["claude.requests.a"])
        await consumer.subscribe(["claude.requests.a", "claude.requests.b"])
        await consumer.subscribe([])
        assert calls == [["claude.requests.a"], ["claude.requests.a", "claude.requests.b"]]
    finally:
        cast(Any, wiring.app.consumer)._thread.thread_loop.close()  # never started
