"""A partner's backlog from offsets: what is waiting, never negative, never another's."""

from __future__ import annotations

from pipeline.kafka.lag import PartitionLag, backlog_by_partner


def test_backlog_is_end_minus_committed_summed_per_partner() -> None:
    lags = [
        PartitionLag("claude.requests.acme", 0, committed=40, low=0, high=100),
        PartitionLag("claude.requests.acme", 1, committed=None, low=5, high=12),  # never committed
        PartitionLag("claude.requests.acme", 2, committed=3, low=10, high=10),  # aged out
        PartitionLag("claude.requests.globex", 0, committed=7, low=0, high=7),
        PartitionLag("claude.responses.acme", 0, committed=0, low=0, high=99),  # not requests
    ]
    assert backlog_by_partner(lags) == {"acme": 60 + 7 + 0, "globex": 0}


def test_a_committed_offset_past_the_end_is_no_backlog() -> None:
    assert PartitionLag("claude.requests.a", 0, committed=12, low=0, high=10).records == 0
