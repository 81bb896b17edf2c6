"""The intake's buffer: a lane per partner, taken in turn (pipeline/kafka/lanes.py)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.kafka.lanes import Lanes


@dataclass
class Message:
    topic: str
    offset: int


@dataclass
class Event:
    message: Message


def ev(topic: str, offset: int) -> Event:
    return Event(Message(topic, offset))


def topic_of(e: Event) -> str:
    return e.message.topic


def test_lanes_take_each_partner_in_turn_and_keep_each_lane_in_order() -> None:
    lanes = Lanes(topic_of)
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


def test_removing_a_partners_records_keeps_the_others_in_turn() -> None:
    # A rebalance revokes a partition: its fetched records leave the lanes, unacked.
    lanes = Lanes(topic_of)
    for topic, offset in [("a", 0), ("b", 0), ("a", 1), ("c", 0), ("b", 1)]:
        lanes.append(ev(topic, offset))
    assert lanes.remove(lambda e: e.message.topic == "b") == 2
    assert lanes.depth("b") == 0
    assert len(lanes) == 3
    taken = [(e.message.topic, e.message.offset) for e in (lanes.popleft() for _ in range(3))]
    assert taken == [("a", 0), ("c", 0), ("a", 1)]
    assert lanes.remove(lambda e: True) == 0


def test_a_held_lane_is_skipped_until_released_and_keeps_its_order() -> None:
    # A partner's queue downstream is full: what it had fetched waits here.
    lanes = Lanes(topic_of)
    lanes.append(ev("full", 0))
    lanes.hold("full")
    lanes.append(ev("full", 1))
    lanes.append(ev("light", 0))
    assert lanes.ready()
    assert lanes.popleft().message == Message("light", 0)
    assert not lanes.ready()
    assert len(lanes) == 2  # held, not gone
    lanes.hold("held-and-empty")
    lanes.remove(lambda e: False)
    lanes.release("full")
    taken = [(e.message.topic, e.message.offset) for e in (lanes.popleft() for _ in range(2))]
    assert taken == [("full", 0), ("full", 1)]
    lanes.release("held-and-empty")
    lanes.append(ev("held-and-empty", 0))
    assert lanes.popleft().message == Message("held-and-empty", 0)
    assert not lanes.ready()


def test_a_held_lane_can_be_removed() -> None:
    lanes = Lanes(topic_of)
    lanes.append(ev("a", 0))
    lanes.hold("a")
    assert lanes.remove(lambda e: True) == 1
    lanes.release("a")
    assert not lanes.ready()
    assert len(lanes) == 0
