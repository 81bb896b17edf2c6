"""The two corrections to Faust's consumer, with a fake aiokafka consumer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.faustconsumer import ReadOffsets, never_committed, verified_end_offsets


class FakeConsumer:
    """Answers fetches with the high watermarks it was given; records what was asked."""

    def __init__(self, true_ends: Mapping[tuple[str, int], int], answers_per_call: int = 99):
        self.true_ends = dict(true_ends)
        self.answers_per_call = answers_per_call
        self.seeks: dict[tuple[str, int], int] = {}
        self.answered: dict[tuple[str, int], int] = {}
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def assign(self, partitions: list[Any]) -> None:
        self.assigned = [tuple(p) for p in partitions]

    def seek(self, partition: Any, offset: int) -> None:
        assert offset >= 0
        self.seeks[tuple(partition)] = offset

    def pause(self, *partitions: Any) -> None:
        pass

    async def getmany(self, *partitions: Any, timeout_ms: int = 0) -> Mapping[Any, Any]:
        known = [tuple(p) for p in partitions if tuple(p) in self.true_ends]
        for p in known[: self.answers_per_call]:
            self.answered[p] = self.true_ends[p]
        return {}

    def highwater(self, partition: Any) -> int | None:
        return self.answered.get(tuple(partition))


async def test_the_last_batch_is_counted_to_its_last_record() -> None:
    # Tansu says 1 after one batch of offsets 0-4: the base of the last batch plus one
    listed = {("log", 0): 1, ("log", 1): 7, ("log", 2): 0, ("log", 3): None}
    fake = FakeConsumer({("log", 0): 5, ("log", 1): 7})
    ends = await verified_end_offsets(listed, lambda: fake, timeout_s=1)
    assert ends == {("log", 0): 5, ("log", 1): 7, ("log", 2): 0, ("log", 3): None}
    # each fetch starts at the last listed record, which exists; empty partitions are not asked
    assert fake.seeks == {("log", 0): 0, ("log", 1): 6}
    assert fake.started
    assert fake.stopped


async def test_partitions_are_asked_until_each_has_answered() -> None:
    listed = {("log", p): 3 for p in range(4)}
    fake = FakeConsumer({("log", p): 3 + p for p in range(4)}, answers_per_call=1)
    ends = await verified_end_offsets(listed, lambda: fake, timeout_s=5)
    assert ends == {("log", p): 3 + p for p in range(4)}


async def test_no_answer_keeps_the_listed_end_and_never_goes_lower() -> None:
    listed = {("log", 0): 4}
    silent = FakeConsumer({("log", 0): 4}, answers_per_call=0)
    assert await verified_end_offsets(listed, lambda: silent, timeout_s=0.3) == listed
    assert silent.stopped
    lower = FakeConsumer({("log", 0): 2})  # a fetch answering below the listed end
    assert await verified_end_offsets(listed, lambda: lower, timeout_s=0.3) == {("log", 0): 4}


async def test_nothing_to_verify_opens_no_consumer() -> None:
    def boom() -> FakeConsumer:
        raise AssertionError("no consumer needed")

    assert await verified_end_offsets({("log", 0): 0}, boom) == {("log", 0): 0}


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

    from pipeline.faustconsumer import install

    app = faust.App("seek-order-test", broker="kafka://127.0.0.1:1")
    install(app, {"bootstrap_servers": "127.0.0.1:1"})
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
