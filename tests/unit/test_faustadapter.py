"""The corrections to Faust's consumer, each pinned against the installed Faust."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import pytest

from pipeline.kafka.faustadapter import ReadOffsets, never_committed


def test_partitions_without_a_committed_offset_are_rewound_but_not_changelogs() -> None:
    committed = {
        ("claude.requests.a", 0): None,  # nothing committed: aiokafka did not seek
        ("claude.requests.a", 1): 0,  # zero committed: aiokafka did not seek either
        ("claude.requests.a", 2): 17,
        ("app-request-ids-changelog", 0): None,  # recovery positions these itself
    }
    assert never_committed(committed, {"app-request-ids-changelog"}) == [
        ("claude.requests.a", 0),
        ("claude.requests.a", 1),
    ]


def test_read_offsets_keep_gaps_but_never_make_faust_drop_a_record() -> None:
    offsets = ReadOffsets()
    tp = ("claude.requests.a", 0)
    assert offsets[tp] is None  # nothing delivered yet
    offsets[tp] = 10  # Faust: the last offset delivered
    last = offsets[tp]
    assert last is not None
    # Faust's test `offset >= last` passes for a refetch below the last delivered...
    assert 2 >= last  # noqa: SIM300 (the very expression Faust evaluates)
    assert 10 >= last  # noqa: SIM300
    # ...and its gap arithmetic (transaction markers, compaction) is unchanged
    assert 13 - (last or 0) == 3
    assert last + 1 == 11
    offsets.update({tp: 2})  # Faust's reset after seeking to committed offsets
    assert offsets[tp] is None


async def test_the_seek_stops_the_flow_before_faust_empties_the_stream_queues(
    monkeypatch: Any,
) -> None:
    # Faust: perform_seek, then flow_control.resume() (empties the stream
    # queues), then consumer.resume_flow(). Records handed over between the
    # seek and the emptying were lost, so our seek stops the flow first.
    import faust
    from faust.transport.drivers import aiokafka as driver

    from pipeline.kafka.faustadapter import install

    app = faust.App("seek-order-test", broker="kafka://127.0.0.1:1")
    install(app)
    consumer: Any = app.consumer
    flow_at_seek: list[bool] = []

    async def seek_to_committed(self: Any) -> Mapping[Any, int]:
        flow_at_seek.append(self.flow_active)
        return {}

    monkeypatch.setattr(driver.Consumer, "seek_to_committed", seek_to_committed)
    try:
        consumer.resume_flow()
        await consumer.perform_seek()
        assert flow_at_seek == [False]
        assert not consumer.flow_active  # until Faust resumes it, after the queues are emptied
        consumer.resume_flow()
        assert consumer.flow_active
    finally:
        consumer._thread.thread_loop.close()  # never started: only its loop to close


def _app(name: str) -> Any:
    import faust

    from pipeline.kafka.faustadapter import install

    app = faust.App(name, broker="kafka://127.0.0.1:1")
    install(app)
    return app


async def test_a_batch_keeps_the_partitions_it_was_fetched_for_when_a_pause_shrinks_the_set(
    monkeypatch: Any,
) -> None:
    from faust.transport.drivers import aiokafka as driver

    live = {"tp-a", "tp-b"}

    async def wait_next_records(self: Any, timeout: Any) -> tuple[Any, Any]:  # noqa: ASYNC109
        return {"tp-a": [1], "tp-b": [2]}, live

    monkeypatch.setattr(driver.Consumer, "_wait_next_records", wait_next_records)
    app = _app("pause-copy-test")
    try:
        _, faust_active = await driver.Consumer._wait_next_records(app.consumer, 0)
        faust_active = cast(Any, faust_active)
        _, our_active = await app.consumer._wait_next_records(0)
        live.discard("tp-b")  # our intake pauses a partner while the batch is handed over
        assert faust_active is live  # unpatched: Faust would drop tp-b's records now
        assert our_active == {"tp-a", "tp-b"}  # ours: every record of the batch is handed over
    finally:
        app.consumer._thread.thread_loop.close()


async def test_a_batch_whose_partition_was_revoked_meanwhile_does_not_crash_the_fetcher(
    monkeypatch: Any,
) -> None:
    """Seen in the suite: a rebalance revoked a partition while Faust handed over its
    fetched batch; Faust's highwater lookup raised and the worker stopped."""
    from faust.transport.drivers import aiokafka as driver

    def unassigned(self: Any, tp: Any) -> int:
        raise AssertionError("Partition is not assigned")  # what aiokafka raises

    monkeypatch.setattr(driver.AIOKafkaConsumerThread, "highwater", unassigned)
    app = _app("revoked-highwater-test")
    try:
        with pytest.raises(AssertionError):
            driver.Consumer.highwater(app.consumer, cast(Any, "tp-revoked"))  # unpatched: raises
        assert app.consumer.highwater("tp-revoked") is None
    finally:
        app.consumer._thread.thread_loop.close()


async def test_a_partition_with_nothing_committed_is_rewound_to_its_start(
    monkeypatch: Any,
) -> None:
    from faust.transport.drivers import aiokafka as driver

    seeks: list[tuple[str, int]] = []

    async def seek_to_committed(self: Any) -> Mapping[Any, int | None]:
        return {("claude.requests.new", 0): None}

    async def earliest_offsets(self: Any, *tps: Any) -> Mapping[Any, int]:
        return dict.fromkeys(tps, 7)

    async def seek(self: Any, tp: Any, offset: int) -> None:
        seeks.append((tp[0], offset))

    monkeypatch.setattr(driver.Consumer, "seek_to_committed", seek_to_committed)
    monkeypatch.setattr(driver.Consumer, "earliest_offsets", earliest_offsets)
    monkeypatch.setattr(driver.Consumer, "_seek", seek)
    app = _app("rewind-test")
    try:
        unpatched = await driver.Consumer.seek_to_committed(app.consumer)
        assert unpatched == {("claude.requests.new", 0): None}  # Faust would not seek at all
        ours = await app.consumer.seek_to_committed()
        assert ours == {("claude.requests.new", 0): 7}
        assert seeks == [("claude.requests.new", 7)]
    finally:
        app.consumer._thread.thread_loop.close()


def test_the_start_up_check_names_what_is_missing_and_the_faust_version(monkeypatch: Any) -> None:
    from pipeline.errors import AdapterError
    from pipeline.kafka import faustadapter
    from pipeline.kafka.faustadapter import check, faust_version

    check()  # this Faust has everything
    renamed = (("faust.transport.drivers.aiokafka", "Consumer", ("_wait_next_batch",)),)
    monkeypatch.setattr(faustadapter, "REQUIRED", renamed)  # as if Faust renamed a method
    with pytest.raises(AdapterError) as info:
        check()
    message = str(info.value)
    assert "faust.transport.drivers.aiokafka.Consumer has no '_wait_next_batch'" in message
    assert f"faust-streaming {faust_version()}" in message


def test_only_the_embedded_broker_gets_workarounds() -> None:
    from pipeline.config import Settings

    kafka = Settings().broker_profile
    assert kafka.idempotent_producers
    embedded = Settings(profile="dev").broker_profile
    assert not embedded.idempotent_producers
    assert embedded.fetch_max_wait_ms < kafka.fetch_max_wait_ms
    assert Settings(profile="dev", broker="kafka").broker_profile == kafka


def test_private_faust_names_live_in_the_adapter_only() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "pipeline"
    private = re.compile(
        r"_read_offset|_wait_next_records|perform_seek|seek_to_committed|_resubscribe_sleep|"
        r"_ensure_consumer|_fetch_max_wait_ms|_prefetch_backoff|_transport\b|send_changelog|"
        r"_get_actions_per_node|_proc_fetch_request|\._in_flight\b|_conns\b|"
        r"\.data\b.*table|"
        r"table.*\.data\b"
    )
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for path in root.rglob("*.py")
        if path.name != "faustadapter.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert offenders == []


async def test_the_table_manager_starts_recovery_without_waiting_a_second(monkeypatch: Any) -> None:
    from faust.tables.manager import TableManager as FaustTableManager

    from pipeline.kafka.faustadapter import table_manager

    slept: list[float] = []
    started: list[str] = []

    async def sleep(self: Any, seconds: float) -> None:
        slept.append(seconds)

    async def update_channels(self: Any) -> None:
        started.append("channels")

    monkeypatch.setattr(FaustTableManager, "sleep", sleep)
    monkeypatch.setattr(FaustTableManager, "_update_channels", update_channels)
    app = _app("tables-test")
    try:
        ours, faust_own = table_manager()(app), FaustTableManager(app)
        for manager in (faust_own, ours):
            monkeypatch.setattr(manager.recovery, "start", _noop)
            await manager.on_start()
        assert slept == [1.0]  # Faust's own waits; ours does not
        assert started == ["channels", "channels"]
    finally:
        app.consumer._thread.thread_loop.close()


async def _noop() -> None:
    pass


def test_nothing_is_committed_past_a_record_that_is_not_acked() -> None:
    from faust.transport.drivers import aiokafka as driver
    from faust.types import TP

    app = _app("commit-test")
    consumer: Any = app.consumer
    tp = TP("claude.requests.acme", 3)

    def acked(*offsets: int) -> None:
        consumer._acked[tp] = list(offsets)
        consumer._acked_index[tp] = set(offsets)

    try:
        # 17 is the committed position (the next to read) and is not acked: a
        # request a draining worker left for redelivery; 18 and 19 are.
        consumer._committed_offset[tp] = 17
        acked(18, 19)
        assert driver.Consumer._new_offset(consumer, tp) == 20  # unpatched: 17 is lost
        acked(18, 19)
        assert consumer._new_offset(tp) is None  # ours: wait for 17
        acked(17, 18, 19)
        assert consumer._new_offset(tp) == 20
        # before the first commit Faust knows no position and checks nothing
        consumer._committed_offset[tp] = None
        consumer._positions[tp] = 40
        acked(41)
        assert driver.Consumer._new_offset(consumer, tp) == 42  # unpatched: 40 is lost
        acked(41)
        assert consumer._new_offset(tp) is None
    finally:
        consumer._thread.thread_loop.close()


def test_the_fetch_wait_and_the_prefetch_back_off_are_set_on_the_consumers_fetcher() -> None:
    from types import SimpleNamespace

    from pipeline.errors import AdapterError
    from pipeline.kafka.faustadapter import PREFETCH_BACKOFF_S, set_fetch_wait

    def app_with(fetcher: Any) -> Any:
        consumer = SimpleNamespace(_fetcher=fetcher)
        thread = SimpleNamespace(_ensure_consumer=lambda: consumer)
        return SimpleNamespace(consumer=SimpleNamespace(_thread=thread))

    # aiokafka's defaults under Faust: a 1,500 ms wait, a 100 ms back-off
    fetcher = SimpleNamespace(_fetch_max_wait_ms=1500, _prefetch_backoff=0.1)
    set_fetch_wait(app_with(fetcher), 10)
    assert fetcher._fetch_max_wait_ms == 10
    assert fetcher._prefetch_backoff == PREFETCH_BACKOFF_S == 0.01

    with pytest.raises(AdapterError, match="_prefetch_backoff"):
        set_fetch_wait(app_with(SimpleNamespace(_fetch_max_wait_ms=1500)), 10)


async def test_heavy_topics_are_fetched_apart_and_never_in_two_fetches_at_once() -> None:
    import asyncio
    from types import SimpleNamespace

    from aiokafka.protocol.fetch import FetchRequest

    from pipeline.kafka.faustadapter import LANE_GROUP, fetch_heavy_apart
    from pipeline.kafka.fetchlanes import HEAVY, SHARED, HeavyTopics

    now = [0.0]
    heavy = HeavyTopics(100, hold_s=10.0, clock=lambda: now[0])
    request = FetchRequest(10, 1, 1000, 0, [("t.heavy", [(0, 5, 100)]), ("t.light", [(0, 7, 100)])])
    sent: list[tuple[int, int, list[str]]] = []
    answer = asyncio.Event()

    async def send(node_id: int, request: Any, *, group: int = 0) -> Any:
        topics = [topic for topic, _ in request.topics]
        sent.append((node_id, group, topics))
        if topics != ["t.heavy"]:
            return SimpleNamespace(topics=[(t, [(0, 0, 8, b"x" * 50)]) for t in topics])
        await answer.wait()  # the heavy fetch is slow to come back, with another heavy batch
        return SimpleNamespace(topics=[("t.heavy", [(0, 0, 6, b"x" * 500)])])

    class Fetcher:  # aiokafka's, as far as the adapter touches it
        def __init__(self) -> None:
            self._in_flight: set[Any] = set()
            self._client = SimpleNamespace(send=send)

        def _get_actions_per_node(self, assignment: Any) -> tuple[Any, ...]:
            return ([(7, request)], {}, 0.1, False, [])

        async def _proc_fetch_request(self, assignment: Any, node_id: Any, request: Any) -> bool:
            await self._client.send(node_id, request)
            return True

    fetcher = Fetcher()
    fetch_heavy_apart(SimpleNamespace(_fetcher=fetcher), heavy)
    fetch_heavy_apart(SimpleNamespace(_fetcher=fetcher), heavy)  # every assignment: once kept

    def planned() -> list[tuple[Any, list[str]]]:
        return [
            (key, [t for t, _ in r.topics]) for key, r in fetcher._get_actions_per_node(None)[0]
        ]

    assert planned() == [(7, ["t.heavy", "t.light"])]  # nothing heavy: aiokafka's own fetch
    heavy.saw("t.heavy", 1000)
    assert planned() == [((7, HEAVY), ["t.heavy"]), ((7, SHARED), ["t.light"])]
    # as aiokafka's fetch routine does: one task per (node, lane) key in flight
    tasks = []
    for key, r in fetcher._get_actions_per_node(None)[0]:
        fetcher._in_flight.add(key)
        tasks.append(asyncio.create_task(fetcher._proc_fetch_request(None, key, r)))
    assert planned() == []  # both lanes under way
    await tasks[1]  # the shared lane's answer comes...
    fetcher._in_flight.discard((7, SHARED))
    assert sorted(sent) == [(7, 0, ["t.light"]), (7, LANE_GROUP + HEAVY, ["t.heavy"])]
    now[0] = 11.0  # ...and t.heavy's hold ends while its own fetch is under way
    assert planned() == [((7, SHARED), ["t.light"])]  # not fetched twice at once
    answer.set()
    await asyncio.gather(*tasks)
    fetcher._in_flight.clear()
    assert planned() == [((7, HEAVY), ["t.heavy"]), ((7, SHARED), ["t.light"])]  # heavy again


async def test_with_a_crc_check_every_fetch_response_is_checked_instead_of_by_aiokafka() -> None:
    from types import SimpleNamespace

    from aiokafka.errors import CorruptRecordException
    from aiokafka.protocol.fetch import FetchRequest

    from pipeline.kafka.faustadapter import fetch_heavy_apart
    from pipeline.kafka.fetchlanes import HeavyTopics

    checked: list[Any] = []
    responses = [SimpleNamespace(topics=[("t", [(0, 0, 1, b"ok")])]), SimpleNamespace(topics=[])]

    def check(response: Any) -> None:
        checked.append(response)
        if not response.topics:
            raise CorruptRecordException("invalid CRC")

    async def send(node_id: int, request: Any, *, group: int = 0) -> Any:
        return responses.pop(0) if isinstance(request, FetchRequest) else "metadata"

    class Fetcher:  # aiokafka's, as far as the adapter touches it
        def __init__(self) -> None:
            self._check_crcs, self._in_flight = True, set[Any]()
            self._client = SimpleNamespace(send=send)

        def _get_actions_per_node(self, assignment: Any) -> Any: ...
        async def _proc_fetch_request(self, *args: Any) -> Any: ...

    fetcher = Fetcher()
    fetch_heavy_apart(SimpleNamespace(_fetcher=fetcher), HeavyTopics(100), check)
    assert fetcher._check_crcs is False  # aiokafka's own check is off...
    request = FetchRequest(10, 1, 1000, 0, [("t", [(0, 0, 100)])])
    assert (await fetcher._client.send(1, request)).topics  # ...ours saw the response
    with pytest.raises(CorruptRecordException):  # aiokafka logs it and fetches again
        await fetcher._client.send(1, request)
    assert await fetcher._client.send(1, "not a fetch") == "metadata"
    assert len(checked) == 2
