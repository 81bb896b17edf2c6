"""The request agent's buffer: a lane per partner, taken in turn, with
back-pressure per lane (pipeline/kafka/lanes.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from mode.utils.queues import FlowControlEvent

from pipeline.kafka.lanes import FairBuffer, Lanes


@dataclass
class Message:
    topic: str
    offset: int


@dataclass
class Event:
    message: Message


def ev(topic: str, offset: int) -> Event:
    return Event(Message(topic, offset))


def test_lanes_take_each_partner_in_turn_and_keep_each_lane_in_order() -> None:
    lanes = Lanes()
    for i in range(4):
        lanes.append(ev("flood", i))
    lanes.append(ev("light", 0))
    lanes.append(ev("light", 1))
    taken = [(e.message.topic, e.message.offset) for e in (lanes.popleft() for _ in range(6))]
    assert taken == [
        ("flood", 0),
        ("light", 0),
        ("flood", 1),
        ("light", 1),
        ("flood", 2),
        ("flood", 3),
    ]
    assert not lanes
    assert len(lanes) == 0


async def test_a_light_partner_behind_a_full_flood_is_next_not_last() -> None:
    # Before: one FIFO. The light partner's record came out after every one of
    # the flood's records buffered ahead of it.
    buffer = FairBuffer(maxsize=256, lane_max=256, flow_control=FlowControlEvent())
    for i in range(200):
        buffer.put_nowait(ev("claude.requests.flood", i))
    buffer.put_nowait(ev("claude.requests.light", 0))
    first, second = buffer.get_nowait(), await buffer.get()
    assert first.message.topic == "claude.requests.flood"
    assert (second.message.topic, second.message.offset) == ("claude.requests.light", 0)
    assert buffer.qsize() == 199
    assert buffer.depth("claude.requests.flood") == 199


def test_only_the_lane_under_pressure_is_paused_and_it_resumes_when_drained() -> None:
    buffer = FairBuffer(maxsize=40, lane_max=10, flow_control=FlowControlEvent())  # 8, 4
    paused: list[str] = []
    resumed: list[str] = []

    def put(topic: str, offset: int) -> bool:
        return buffer.put_nowait_enhanced(
            ev(topic, offset),
            on_pressure_high=lambda: paused.append(topic),
            on_pressure_drop=resume_of[topic],
        )

    resume_of = {t: (lambda t=t: resumed.append(t)) for t in ("flood", "light")}
    for i in range(8):
        assert not put("flood", i)
    assert not put("light", 0)  # light's lane holds nothing
    assert put("flood", 8)  # flood's lane is at the mark: its partition pauses
    assert paused == ["flood"]
    assert not put("flood", 9)  # already paused: said once
    assert paused == ["flood"]

    taken = [buffer.get_nowait() for _ in range(7)]
    assert taken[1].message.topic == "light"
    assert resumed == []  # flood's lane holds 4 now: seen at the next take (as mode's)
    buffer.get_nowait()
    assert resumed == ["flood"]
    assert buffer.qsize() == 3


async def test_an_empty_buffer_waits_for_the_next_record() -> None:
    buffer = FairBuffer(maxsize=4, lane_max=4, flow_control=FlowControlEvent())
    waiting = asyncio.ensure_future(buffer.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    buffer.put_nowait(ev("light", 7))
    async with asyncio.timeout(1):
        got = await waiting
    assert got.message.offset == 7
    buffer.put_nowait(ev("light", 8))
    buffer.clear()
    assert buffer.empty()
