"""Which upstream key a request spends, across a rotation."""

from pipeline.partners import Partner
from pipeline.records import Progress
from pipeline.security.signing import SecretResolver
from pipeline.upstream.keys import UNRESOLVED, ApiKeys

KEYS = ApiKeys(SecretResolver({"OLD": "sk-old", "NEW": "sk-new"}), "sk-default")
ROTATED = Partner(
    "acme",
    "env:S",
    api_key_ref="env:NEW",
    previous_api_key_ref="env:OLD",
    previous_api_key_expires_at_ms=1_000,
)


def test_a_request_not_started_uses_the_new_key() -> None:
    assert KEYS.for_attempt(ROTATED, Progress(), now_ms=500) == "sk-new"


def test_a_started_request_keeps_the_old_key_during_the_grace_window_only() -> None:
    started = Progress(key_ref="env:OLD", key_pinned=True)
    assert KEYS.for_attempt(ROTATED, started, now_ms=999) == "sk-old"
    assert KEYS.for_attempt(ROTATED, started, now_ms=1_000) == "sk-new"  # grace over
    assert started.key_ref == "env:NEW"  # and it stays there


def test_rotating_away_from_the_default_key() -> None:
    from_default = ROTATED.with_(previous_api_key_ref="")
    started = Progress(key_ref=None, key_pinned=True)
    assert KEYS.for_attempt(from_default, started, now_ms=10) == "sk-default"


def test_a_key_that_cannot_be_read_queues_apart_and_fails_fast() -> None:
    broken = Partner("acme", "env:S", api_key_ref="env:MISSING")
    assert KEYS.queue_key(broken, Progress(), now_ms=0) == UNRESOLVED + "acme"
