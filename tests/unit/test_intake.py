from __future__ import annotations

import dataclasses

import pytest

from pipeline.client import build_request
from pipeline.errors import Misplaced
from pipeline.lifecycle.intake import Intake, Rejected
from pipeline.lifecycle.placement import partition_for
from pipeline.partners import Partner, Registry
from pipeline.records import SourceRecord
from pipeline.schemas import Codec
from pipeline.security.signing import SecretResolver, signed_headers

NOW = 1_800_000_000.0
CODEC = Codec()
ENV = {"ACME": "acme-secret", "OLD": "old-secret"}


def _intake(**partner_kw: object) -> Intake:
    registry = Registry()
    registry.apply("acme", Partner("acme", "env:ACME", **partner_kw))  # type: ignore[arg-type]
    return Intake(registry, CODEC, SecretResolver(ENV), 300.0, wall=lambda: NOW, mono=lambda: 0.0)


def _record(
    value: bytes,
    *,
    secret: bytes = b"acme-secret",
    key: bytes | None = b"r1",
    topic: str = "claude.requests.acme",
    ts: float = NOW,
    headers: list[tuple[str, bytes]] | None = None,
) -> SourceRecord:
    if headers is None:
        headers = signed_headers("acme", secret, value, ts)
    return SourceRecord(topic, 0, 7, key, value, headers)


def _value(**kw: object) -> bytes:
    params: dict[str, object] = {"request_id": "r1", "now_ms": int(NOW * 1000)}
    params.update(kw)
    prompt = str(params.pop("prompt", "hello"))
    partner = str(params.pop("partner", "acme"))
    return CODEC.encode("ClaudeRequest", build_request(partner, prompt, **params))  # type: ignore[arg-type]


def _reason(intake: Intake, record: SourceRecord) -> tuple[str, str | None, str | None]:
    with pytest.raises(Rejected) as info:
        intake.admit(record)
    return info.value.error.reason, info.value.partner_id, info.value.request_id


def test_admits_a_good_record() -> None:
    job = _intake().admit(_record(_value(max_tokens=100)))
    assert (job.partner_id, job.request_id, job.replay_count) == ("acme", "r1", 0)
    assert job.est_input_tokens == 3 + 4 + 2
    assert job.cost.tokens == 9 + 100  # what the limits are charged: input + max_tokens


def test_unknown_partner() -> None:
    record = _record(_value(), topic="claude.requests.nobody")
    assert _reason(_intake(), record) == ("unknown_partner", "nobody", "r1")


@pytest.mark.parametrize(
    "record",
    [
        _record(_value(), secret=b"wrong"),
        _record(_value(), ts=NOW - 301),
        _record(_value(), headers=[]),
        _record(_value(partner="globex")),  # signed fine, but claims another partner
    ],
)
def test_auth_failures(record: SourceRecord) -> None:
    assert _reason(_intake(), record)[0] == "auth_failed"


def test_signed_garbage_is_a_schema_error_keyed_by_the_record_key() -> None:
    assert _reason(_intake(), _record(b"\x00garbage", key=b"k-9")) == (
        "schema_error",
        "acme",
        "k-9",
    )


def test_garbage_without_a_usable_key_has_no_request_id() -> None:
    assert _reason(_intake(), _record(b"junk", key=b"\xff\xfe"))[2] is None


def test_disabled_partner() -> None:
    assert _reason(_intake(enabled=False), _record(_value()))[0] == "partner_disabled"


@pytest.mark.parametrize(
    ("partner_kw", "value_kw"),
    [
        ({"allowed_models": ("claude-haiku-4-5",)}, {"model": "claude-opus-4-8"}),
        ({"max_tokens_cap": 100}, {"max_tokens": 101}),
        ({}, {"max_tokens": -1}),
        ({}, {"temperature": 1.5}),
        ({}, {"prompt": ""}),
    ],
)
def test_invalid_requests(partner_kw: dict[str, object], value_kw: dict[str, object]) -> None:
    reason, _, request_id = _reason(_intake(**partner_kw), _record(_value(**value_kw)))
    assert (reason, request_id) == ("invalid_request", "r1")


def test_deadline_expired() -> None:
    record = _record(_value(deadline_ms=int(NOW * 1000) - 1))
    assert _reason(_intake(), record)[0] == "deadline_expired"


def test_previous_secret_accepted_only_during_grace() -> None:
    value = _value()
    in_grace = _intake(
        previous_signing_secret_ref="env:OLD", previous_secret_expires_at_ms=int(NOW * 1000) + 1
    )
    assert in_grace.admit(_record(value, secret=b"old-secret")).request_id == "r1"
    expired = _intake(
        previous_signing_secret_ref="env:OLD", previous_secret_expires_at_ms=int(NOW * 1000)
    )
    assert _reason(expired, _record(value, secret=b"old-secret"))[0] == "auth_failed"


def test_a_record_outside_the_partition_its_key_gives_is_refused_without_a_response() -> None:
    registry = Registry()
    registry.apply("acme", Partner("acme", "env:ACME"))
    intake = Intake(
        registry, CODEC, SecretResolver(ENV), 300.0, wall=lambda: NOW, partitions=lambda t: [4]
    )
    home = partition_for(b"r1", 4)
    at_home = dataclasses.replace(_record(_value()), partition=home)
    assert intake.admit(at_home).request_id == "r1"
    elsewhere = dataclasses.replace(at_home, partition=(home + 1) % 4)
    with pytest.raises(Rejected) as info:
        intake.admit(elsewhere)
    assert info.value.error.reason == "auth_failed"
    assert f"belongs in partition {home} of 4" in info.value.error.detail
    assert not info.value.respond  # the copy in the right place answers the partner
    assert isinstance(info.value.error, Misplaced)  # unless none is there (homes.py)
    assert (info.value.error.topic, info.value.error.homes) == (at_home.topic, [home])
    # moved to another key: the same, whatever the partition
    with pytest.raises(Rejected) as info:
        intake.admit(dataclasses.replace(at_home, key=b"r2"))
    assert "must be the request_id" in info.value.error.detail
    assert not info.value.respond


def test_after_partitions_are_added_a_key_is_placed_right_by_the_old_count_too() -> None:
    # CreatePartitions 4 -> 8: a producer with a fresh view puts a key where 8
    # says, one with an older view (up to its metadata max age) where 4 said.
    # Before, the worker checked only the newest count and refused the latter.
    registry = Registry()
    registry.apply("acme", Partner("acme", "env:ACME"))
    counts = [8, 4]
    intake = Intake(registry, CODEC, SecretResolver(ENV), 300.0, wall=lambda: NOW,
                    partitions=lambda t: counts)  # fmt: skip
    key = next(k for k in (f"r{i}".encode() for i in range(100))
               if partition_for(k, 8) != partition_for(k, 4))  # fmt: skip
    value = _value(request_id=key.decode())
    for n in (8, 4):
        record = dataclasses.replace(_record(value, key=key), partition=partition_for(key, n))
        assert intake.admit(record).request_id == key.decode()
    wrong = next(p for p in range(8) if p not in (partition_for(key, 8), partition_for(key, 4)))
    with pytest.raises(Rejected) as info:
        intake.admit(dataclasses.replace(_record(value, key=key), partition=wrong))
    assert f"belongs in partition {partition_for(key, 8)} of 8" in info.value.error.detail


def test_fast_mode_is_carried_but_refused_to_a_partner_with_a_budget() -> None:
    from pipeline.client import request_record

    params = {"model": "claude-haiku-4-5", "max_tokens": 8, "speed": "fast",
              "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    record = request_record(params, partner_id="acme", request_id="r1")
    record["created_at_ms"] = int(NOW * 1000)
    value = CODEC.encode("ClaudeRequest", record)
    assert _intake().admit(_record(value)).params["speed"] == "fast"
    reason, _, _ = _reason(_intake(monthly_budget_usd=5.0), _record(value))
    assert reason == "invalid_request"


def test_a_model_with_no_price_is_refused_to_a_partner_with_a_usd_budget() -> None:
    # It would cost $0 in the usage records: the budget would never stop it.
    intake = _intake(monthly_budget_usd=50.0)
    with pytest.raises(Rejected) as info:
        intake.admit(_record(_value(model="claude-imaginary-9")))
    assert info.value.error.reason == "invalid_request"
    assert str(info.value.error) == (
        "no price for model claude-imaginary-9; add it with PIPELINE_PRICES_FILE"
    )
    assert intake.admit(_record(_value(model="claude-haiku-4-5"))).request_id == "r1"


def test_a_model_with_no_price_is_a_warning_once_for_a_partner_without_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    intake = _intake(daily_token_budget=1_000_000)  # tokens need no price
    with caplog.at_level("WARNING", logger="pipeline.lifecycle.intake"):
        for _ in range(3):
            assert intake.admit(_record(_value(model="claude-imaginary-9"))).request_id == "r1"
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [
        "no price for model claude-imaginary-9: its usage is recorded at $0 "
        "(add it with PIPELINE_PRICES_FILE)"
    ]
