"""Creating many topics at once: requests a KRaft controller accepts."""

from __future__ import annotations

from pipeline.config import Settings
from pipeline.kafka.clients import MAX_RECORDS_PER_CREATE, TopicSpec, create_batches, partner_topics


def _records(batch: list[TopicSpec]) -> int:
    return sum(1 + s.partitions + len(s.config) for s in batch)


def test_a_thousand_partners_topics_go_in_requests_a_controller_accepts() -> None:
    # Before: one CreateTopics for every topic; Apache Kafka refused a thousand
    # partners' (about 14,000 metadata records, over its 10,000 a request) with
    # POLICY_VIOLATION, so `topics create` and `bench partners` failed.
    settings = Settings()
    specs = [s for i in range(1_000) for s in partner_topics(settings, f"p{i:04d}")]
    assert _records(specs) > 10_000
    batches = create_batches(specs)
    assert len(batches) > 1
    assert all(_records(b) <= MAX_RECORDS_PER_CREATE for b in batches)
    assert [s for b in batches for s in b] == specs  # every topic, once, in order


def test_few_topics_go_in_one_request_and_a_huge_one_alone() -> None:
    small = [TopicSpec(f"t{i}", 4) for i in range(3)]
    assert create_batches(small) == [small]
    huge = TopicSpec("huge", 9_000)
    assert create_batches([*small, huge, *small]) == [small, [huge], small]
    assert create_batches([]) == []
