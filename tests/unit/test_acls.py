from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from pipeline.kafka.acls import all_bindings, partner_bindings, principal_for, worker_bindings


def _ops(bindings: list, principal: str) -> set[tuple[str, str, str, str]]:  # type: ignore[type-arg]
    return {
        (b.resource, b.pattern, b.name, b.operation) for b in bindings if b.principal == principal
    }


def test_a_partner_writes_only_its_requests_and_reads_only_its_responses() -> None:
    got = _ops(partner_bindings("acme", "User:acme"), "User:acme")
    assert got == {
        ("TOPIC", "LITERAL", "claude.requests.acme", "WRITE"),
        ("TOPIC", "LITERAL", "claude.requests.acme", "DESCRIBE"),
        ("TOPIC", "LITERAL", "claude.responses.acme", "READ"),
        ("TOPIC", "LITERAL", "claude.responses.acme", "DESCRIBE"),
        ("GROUP", "PREFIXED", "acme.", "READ"),
    }
    # nothing prefixed that could reach another partner's topics
    assert all(
        not (b.resource == "TOPIC" and b.pattern == "PREFIXED")
        for b in partner_bindings("acme", "User:acme")
    )


def test_no_partner_group_prefix_covers_another_partners_groups() -> None:
    # Before: "acme-" (prefixed) matched "acme-eu-responses", a group of partner
    # acme-eu: acme could join it and read acme-eu's committed positions.
    prefixes = {
        pid: next(b.name for b in partner_bindings(pid, f"User:{pid}") if b.resource == "GROUP")
        for pid in ("acme", "acme-eu", "acme_eu", "a")
    }
    for pid, prefix in prefixes.items():
        for other in prefixes:
            if other != pid:
                assert not prefixes[other].startswith(prefix), (pid, other)


def test_partners_do_not_see_each_other() -> None:
    bindings = all_bindings(["acme", "globex"], "User:{partner}", "User:worker", "claude-pipeline")
    acme = _ops(bindings, "User:acme")
    assert not any("globex" in name for _, _, name, _ in acme)
    assert not any(
        name in ("claude.usage", "claude.dlq", "claude.partners") for _, _, name, _ in acme
    )


def test_the_worker_reads_requests_and_writes_outcomes_only() -> None:
    got = _ops(worker_bindings("User:worker", "claude-pipeline"), "User:worker")
    assert ("TOPIC", "PREFIXED", "claude.requests.", "READ") in got
    assert ("TOPIC", "PREFIXED", "claude.responses.", "WRITE") in got
    assert ("TOPIC", "LITERAL", "claude.usage", "WRITE") in got
    assert ("TOPIC", "LITERAL", "claude.dlq", "WRITE") in got
    assert ("TOPIC", "LITERAL", "claude.partners", "READ") in got
    assert ("GROUP", "LITERAL", "claude-pipeline", "READ") in got
    assert ("TRANSACTIONAL_ID", "PREFIXED", "claude-pipeline.txn.", "WRITE") in got
    assert ("TOPIC", "PREFIXED", "claude.requests.", "WRITE") not in got  # cannot forge requests
    assert ("TOPIC", "LITERAL", "claude.partners", "WRITE") not in got  # cannot change partners


def test_principal_templates() -> None:
    assert principal_for("User:{partner}", "acme") == "User:acme"
    assert principal_for("User:partner-{partner}", "acme") == "User:partner-acme"
    with pytest.raises(ConfigError):
        principal_for("acme", "acme")


def test_bindings_render_like_kafka_acls() -> None:
    (first, *_) = partner_bindings("acme", "User:acme")
    assert str(first) == "ALLOW User:acme WRITE TOPIC:LITERAL:claude.requests.acme from *"
