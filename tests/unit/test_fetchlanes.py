"""Which partners are fetched apart: pure, with an injected clock."""

from __future__ import annotations

from pipeline.kafka.fetchlanes import HEAVY, SHARED, HeavyTopics

LIMIT = 256 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_topic_is_heavy_from_its_first_batch_over_the_limit_until_the_hold_passes() -> None:
    clock = Clock()
    heavy = HeavyTopics(LIMIT, hold_s=60.0, clock=clock)
    heavy.saw("claude.requests.a", LIMIT)  # at the limit: a full fetch, not an oversize batch
    assert heavy.lane("claude.requests.a") == SHARED
    assert not heavy.any()
    heavy.saw("claude.requests.a", LIMIT + 1)
    assert heavy.lane("claude.requests.a") == HEAVY
    assert heavy.any()
    assert heavy.lane("claude.requests.b") == SHARED
    clock.now += 59.9
    heavy.saw("claude.requests.a", 10 * 1024 * 1024)  # another one: the hold starts again
    clock.now += 59.9
    assert heavy.lane("claude.requests.a") == HEAVY
    clock.now += 0.1
    assert not heavy.any()
    assert heavy.lane("claude.requests.a") == SHARED


def test_small_batches_do_not_end_the_hold_early() -> None:
    clock = Clock()
    heavy = HeavyTopics(LIMIT, hold_s=10.0, clock=clock)
    heavy.saw("claude.requests.a", 10 * 1024 * 1024)
    clock.now += 5
    heavy.saw("claude.requests.a", 300)
    assert heavy.lane("claude.requests.a") == HEAVY


def test_a_fetch_response_is_read_as_aiokafka_decodes_it() -> None:
    heavy = HeavyTopics(LIMIT, clock=Clock())
    # (topic, [(partition, error_code, highwater, ..., records)]): records last, None if empty
    small, big = b"x" * 300, b"y" * (LIMIT + 1)
    heavy.saw_response(
        [
            ("claude.requests.a", [(0, 0, 5, -1, 0, [], small), (1, 0, 0, -1, 0, [], None)]),
            ("claude.requests.b", [(0, 0, 9, -1, 0, [], small), (3, 0, 2, -1, 0, [], big)]),
        ]
    )
    assert heavy.lane("claude.requests.a") == SHARED
    assert heavy.lane("claude.requests.b") == HEAVY


def test_a_request_splits_by_lane_keeping_each_lanes_order() -> None:
    heavy = HeavyTopics(LIMIT, clock=Clock())
    heavy.saw("claude.requests.b", LIMIT * 4)
    topics = [("claude.requests.a", [1]), ("claude.requests.b", [2]), ("claude.requests.c", [3])]
    assert heavy.split(topics) == {
        SHARED: [("claude.requests.a", [1]), ("claude.requests.c", [3])],
        HEAVY: [("claude.requests.b", [2])],
    }
    assert HeavyTopics(LIMIT).split(topics) == {SHARED: topics}
