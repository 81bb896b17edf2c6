from __future__ import annotations

from typing import Any

import pytest

from pipeline.errors import ConfigError
from pipeline.ops.dlq import DeadLetterEntry, parse_since, percentile, plan_replay, render_table

NOW = 1_800_000_000.0


def test_parse_since() -> None:
    assert parse_since("15m", NOW) == int((NOW - 900) * 1000)
    assert parse_since("2h", NOW) == int((NOW - 7200) * 1000)
    assert parse_since("1d", NOW) == int((NOW - 86400) * 1000)
    assert parse_since("2026-01-01T00:00:00Z") == 1_767_225_600_000
    with pytest.raises(ConfigError, match="--since"):
        parse_since("yesterday-ish")


def _entry(
    request_id: str | None,
    failed_at: int,
    replay_count: int = 0,
    topic: str = "claude.requests.acme",
) -> DeadLetterEntry:
    record: dict[str, Any] = {
        "partner_id": "acme", "request_id": request_id, "reason": "upstream_exhausted",
        "failed_at_ms": failed_at, "replay_count": replay_count, "source_topic": topic,
        "source_partition": 0, "source_offset": failed_at,
    }  # fmt: skip
    return DeadLetterEntry(record)  # type: ignore[arg-type]  # the fields the plan reads


def test_replay_plan_takes_the_latest_per_request_and_respects_the_limit() -> None:
    entries = [
        _entry("a", 1, 0),
        _entry("a", 5, 1),  # a's latest failure, after one replay
        _entry("b", 2, 3),  # replayed three times already
        _entry(None, 3),
        _entry("c", 4, topic="claude.dlq"),
    ]
    plan = plan_replay(entries, max_replays=3)
    assert [(e.record["request_id"], e.record["replay_count"]) for e in plan.replay] == [
        ("a", 1),
        (None, 0),
    ]
    refused = {e.record["request_id"]: why for e, why in plan.refused}
    assert "already replayed 3 times" in refused["b"]
    assert "not a partner request topic" in refused["c"]


def test_percentile_and_table() -> None:
    assert percentile([], 50) is None
    assert percentile([10], 95) == 10.0
    assert percentile(list(range(1, 101)), 50) == pytest.approx(50.5)
    table = render_table([{"a": 1, "b": None}], ["a", "b"])
    assert table.splitlines()[0].startswith("a")


def test_a_request_served_at_any_time_is_never_replayed() -> None:
    # Before: "served since it failed" compared times, so a copy refused after the
    # original was served (served first, failed later) was replayed: a second run.
    entries = [_entry("a", 10), _entry("b", 10), _entry("c", 10)]
    plan = plan_replay(entries, max_replays=3, served={("acme", "a"), ("acme", "b")})
    assert [e.record["request_id"] for e in plan.served] == ["a", "b"]
    assert [e.record["request_id"] for e in plan.replay] == ["c"]


@pytest.mark.parametrize("reason", ["auth_failed", "unknown_partner", "schema_error", "duplicate"])
def test_unauthenticated_unreadable_and_duplicate_dead_letters_are_never_replayed(
    reason: str,
) -> None:
    entry = _entry("x", 10)
    entry.record["reason"] = reason
    plan = plan_replay([entry], max_replays=3)
    assert plan.replay == []
    assert plan.refused == [(entry, f"{reason} is never replayed")]
