from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from pipeline.errors import AuthFailed, SecretError
from pipeline.security.signing import (
    SecretResolver,
    replay_headers,
    sign,
    signed_headers,
    validate_ref,
    verify,
)
from tests.fakes import FakeClock

SECRET = b"s3cret-partner-key"
VALUE = b"\xc3\x01avro-bytes"
NOW = 1_800_000_000.0


def test_signature_is_hmac_sha256_over_timestamp_dot_value() -> None:
    expected = hmac.new(SECRET, b"1800000000." + VALUE, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1_800_000_000, VALUE) == expected
    assert expected == expected.lower()


def _verify(headers: list[tuple[str, bytes]], **kw: object) -> int:
    params: dict[str, object] = {
        "topic_partner": "acme",
        "secrets": [SECRET],
        "now": NOW,
        "max_age_s": 300.0,
    }
    params.update(kw)
    return verify(dict(headers), VALUE, **params)  # type: ignore[arg-type]


def test_a_correct_signature_verifies() -> None:
    assert _verify(signed_headers("acme", SECRET, VALUE, NOW - 10)) == 0


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        (signed_headers("acme", b"other secret", VALUE, NOW), "signature mismatch"),
        (signed_headers("acme", SECRET, VALUE, NOW - 301), "stale signature"),
        (signed_headers("acme", SECRET, VALUE, NOW + 3600), "in the future"),
        (signed_headers("globex", SECRET, VALUE, NOW), "does not match the topic"),
        (signed_headers("acme", SECRET, VALUE, NOW)[1:], "missing header x-partner-id"),
        (signed_headers("acme", SECRET, VALUE, NOW)[:2], "missing header x-signature"),
        (
            [h for h in signed_headers("acme", SECRET, VALUE, NOW) if h[0] != "x-timestamp"],
            "missing header x-timestamp",
        ),
    ],
)
def test_bad_signatures_say_which_check_failed(
    headers: list[tuple[str, bytes]], fragment: str
) -> None:
    with pytest.raises(AuthFailed, match=fragment):
        _verify(headers)


def test_tampered_value_fails() -> None:
    headers = dict(signed_headers("acme", SECRET, VALUE, NOW))
    with pytest.raises(AuthFailed, match="mismatch"):
        verify(
            headers, VALUE + b"!", topic_partner="acme", secrets=[SECRET], now=NOW, max_age_s=300
        )


def test_any_of_several_secrets_is_accepted() -> None:
    headers = signed_headers("acme", b"old-secret", VALUE, NOW)
    assert _verify(headers, secrets=[SECRET, b"old-secret"]) == 0


def test_an_ops_replay_is_signed_afresh_and_its_count_cannot_be_bumped() -> None:
    original = [*signed_headers("acme", SECRET, VALUE, NOW - 86_400), ("trace", b"t1")]
    with pytest.raises(AuthFailed, match="stale"):
        _verify(original)
    replayed = replay_headers(original, "acme", SECRET, VALUE, 1, NOW - 5)
    assert _verify(replayed) == 1
    assert ("trace", b"t1") in replayed  # the partner's own headers travel along
    bumped = [(k, b"3" if k == "x-replay-count" else v) for k, v in replayed]
    with pytest.raises(AuthFailed, match="replay signature mismatch"):
        _verify(bumped)
    forged = replay_headers(original, "acme", b"not the partner's", VALUE, 1, NOW - 5)
    with pytest.raises(AuthFailed, match="signature mismatch"):
        _verify(forged)
    unsigned = [*signed_headers("acme", SECRET, VALUE, NOW), ("x-replay-count", b"2")]
    with pytest.raises(AuthFailed, match="x-replay-signature"):
        _verify(unsigned)


def test_secret_references(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "secret"
    path.write_text("first-secret\n")
    resolver = SecretResolver({"ACME_SECRET": "from-env"}, clock=clock, recheck_s=1.0)
    assert resolver.resolve("env:ACME_SECRET") == b"from-env"
    assert resolver.resolve(f"file:{path}") == b"first-secret"
    path.write_text("second-secret-longer\n")
    assert resolver.resolve(f"file:{path}") == b"first-secret"  # not re-checked yet
    clock.advance(1.5)
    assert resolver.resolve(f"file:{path}") == b"second-secret-longer"


@pytest.mark.parametrize(
    ("ref", "fragment"),
    [
        ("env:MISSING", "MISSING"),
        ("file:/nonexistent/secret", "cannot read"),
        ("plain-secret-value", "env:NAME or file:PATH"),
        ("vault:thing", "env:NAME or file:PATH"),
    ],
)
def test_bad_references(ref: str, fragment: str) -> None:
    with pytest.raises(SecretError, match=fragment) as info:
        SecretResolver({}).resolve(ref)
    if ref == "plain-secret-value":
        assert ref not in str(info.value)  # a pasted secret is never echoed


def test_validate_ref_does_not_echo() -> None:
    with pytest.raises(SecretError) as info:
        validate_ref("sk-ant-pasted-by-mistake")
    assert "sk-ant" not in str(info.value)
