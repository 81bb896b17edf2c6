"""The state log against a real embedded broker: what one worker writes, the next reads."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.dev.devbroker import DevBroker
from pipeline.kafka.clients import core_topics, ensure_topics
from pipeline.kafka.statelog import StateLog
from pipeline.partners import STATE_TOPIC

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    log_file = Path(tmp_path_factory.mktemp("statelog")) / "broker.log"
    broker = DevBroker(log_file=log_file)
    broker.start()
    try:
        settings = Settings(bootstrap_servers=broker.bootstrap, profile="dev")
        ensure_topics(settings, [s for s in core_topics(settings) if s.name == STATE_TOPIC])
        yield settings
    finally:
        broker.stop()


async def _started(settings: Settings, writer: str) -> StateLog:
    log = StateLog(settings, writer=writer)
    log.table("served")  # tables exist before the log is read, as in the worker
    async with asyncio.timeout(30):
        await log.start()
    return log


def test_a_worker_started_later_reads_every_entry_up_to_the_last_of_a_batch(
    settings: Settings,
) -> None:
    # The case Faust's table recovery got wrong here: Tansu lists the end offset
    # of a partition as the base of its last batch plus one, so entries written
    # in one batch at the end were not recovered. The state log syncs by reading
    # its own marker back instead of asking for end offsets.
    async def scenario() -> None:
        first = await _started(settings, "first")
        served = first.table("served")
        writes = [served.put(f"batch|{i}", {"i": i, "w": "first"}) for i in range(50)]
        await asyncio.gather(*writes)
        await first.stop()

        second = await _started(settings, "second")
        try:
            got = second.table("served")
            assert {f"batch|{i}" for i in range(50)} <= set(got.data)
            assert got.get("batch|49") == {"i": 49, "w": "first"}
        finally:
            await second.stop()

    asyncio.run(scenario())


def test_running_workers_follow_each_other_and_never_reapply_their_own_writes(
    settings: Settings,
) -> None:
    async def scenario() -> None:
        a = await _started(settings, "follow-a")
        b = await _started(settings, "follow-b")
        try:
            seen_by_b: list[tuple[str, object]] = []
            b.table("served").watch(lambda k, v: seen_by_b.append((k, v)))
            applied_by_a = a.applied
            await a.table("served").put("follow|1", {"n": 1, "w": "follow-a"})
            await a.table("served").put("follow|1", {"n": 2, "w": "follow-a"})
            b.resync()  # what a worker does when partitions are assigned to it
            async with asyncio.timeout(10):
                await b.wait_synced()
            assert b.table("served").get("follow|1") == {"n": 2, "w": "follow-a"}
            assert [v for k, v in seen_by_b if k == "follow|1"][-1] == {"n": 2, "w": "follow-a"}
            # a's own records came back to a through the log, and were skipped
            a.resync()
            async with asyncio.timeout(10):
                await a.wait_synced()
            assert a.applied == applied_by_a

            # An entry is tombstoned by its writer only; others forget it locally.
            b.table("served").delete("follow|1")
            a.resync()
            async with asyncio.timeout(10):
                await a.wait_synced()
            assert a.table("served").get("follow|1") is not None  # b did not write it
            a.table("served").delete("follow|1")
            a.resync()  # its marker follows the tombstone: once read, the tombstone is in
            async with asyncio.timeout(10):
                await a.wait_synced()
            third = await _started(settings, "follow-c")
            try:
                assert third.table("served").get("follow|1") is None
            finally:
                await third.stop()
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(scenario())
