"""Each partner's Kafka backlog: records written to its request topic that the
worker group has not committed yet.

A worker measures the partitions it owns (end offset minus the group's committed
offset), so the sum over workers is the group's backlog with no double count:
`sum by (partner) (claude_partner_backlog_records)`. Records a worker holds in
memory are not committed yet, so they count: the backlog is what a crash would
hand to the next owner. Measured with a client of its own that never joins the
group (an offset fetch needs no membership), off the event loop.

Each measure is three requests whatever the partition count: the group's
offsets, and the partitions' start and end offsets in one ListOffsets each (a
watermark query per partition was 4,000 round trips every interval with a
thousand partners, a sixth of an idle worker's CPU).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from pipeline.config import Settings
from pipeline.factory import client_config
from pipeline.kafka.clients import reader
from pipeline.partners import partner_of_requests_topic


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    #: The group's committed offset (the next record to read), None if never committed.
    committed: int | None
    low: int
    high: int

    @property
    def records(self) -> int:
        start = self.low if self.committed is None else max(self.committed, self.low)
        return max(0, self.high - start)


def backlog_by_partner(lags: Iterable[PartitionLag]) -> dict[str, int]:
    """Records waiting per partner, from its request topics' partitions."""
    out: dict[str, int] = {}
    for lag in lags:
        partner = partner_of_requests_topic(lag.topic)
        if partner:
            out[partner] = out.get(partner, 0) + lag.records
    return out


class GroupLag:
    """Reads the group's committed offsets and the partitions' watermarks."""

    def __init__(self, settings: Settings, timeout_s: float = 5.0) -> None:
        self._timeout = timeout_s
        self._consumer = reader(settings, settings.group_id)  # reads the group's offsets
        self._admin = AdminClient(client_config(settings))

    def measure(self, positions: Iterable[tuple[str, int]]) -> list[PartitionLag]:
        tps = [TopicPartition(t, p) for t, p in sorted(positions)]
        if not tps:
            return []
        committed = self._consumer.committed(tps, timeout=self._timeout)
        low = self._offsets(tps, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
        high = self._offsets(tps, OffsetSpec.latest())  # type: ignore[no-untyped-call]
        out = []
        for tp in committed:
            key = (tp.topic, tp.partition)
            offset = tp.offset if tp.offset >= 0 else None
            out.append(PartitionLag(tp.topic, tp.partition, offset, low[key], high[key]))
        return out

    def _offsets(self, tps: list[TopicPartition], spec: OffsetSpec) -> dict[tuple[str, int], int]:
        """One ListOffsets for every partition (batched per leader by librdkafka)."""
        futures = self._admin.list_offsets(
            {TopicPartition(tp.topic, tp.partition): spec for tp in tps},
            isolation_level=IsolationLevel.READ_COMMITTED,
            request_timeout=self._timeout,
        )
        return {(tp.topic, tp.partition): int(f.result().offset) for tp, f in futures.items()}

    def close(self) -> None:
        self._consumer.close()
