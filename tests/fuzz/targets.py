"""What the fuzzers feed: one function per target, taking bytes, raising only on
a bug. atheris drives them (`scripts/fuzz`); tests/fuzz/test_regressions.py runs
every seed and every input that once crashed through them on each test run.

- `intake`: a record value the partner signed (the harness signs whatever the
  input is, so the fuzzer gets past the signature to Avro, the bounds, the
  contract checks and the refusal's encoding), with headers chosen by the input.
  Every outcome, admitted or refused, must encode within the record limit.
- `registry`: a `claude.partners` record signed with the registry key: whatever
  it holds, applying it returns applied or skipped, and never raises.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.errors import AuthFailed, ConfigError, InvalidRequest, SchemaError
from pipeline.kafka.follower import admit_partner
from pipeline.lifecycle.intake import Intake, Rejected
from pipeline.lifecycle.outcomes import OutcomeBuilder, fit
from pipeline.limits.pricing import PriceTable
from pipeline.partners import Partner, Registry
from pipeline.records import SourceRecord
from pipeline.schemas import SINGLE_OBJECT_MAGIC, Codec
from pipeline.security.registryauth import RefPolicy, RegistryPolicy, registry_headers
from pipeline.security.signing import (
    H_REPLAY_COUNT,
    H_REPLAY_SIGNATURE,
    SecretResolver,
    replay_signature,
    signed_headers,
)

CODEC = Codec()
SECRET = b"fuzz-secret"
REGISTRY_KEY = b"fuzz-registry-key"
LIMIT = 1 << 20
#: A fixed clock: the seeds were signed and stamped at it.
NOW = 1_800_000_000.0
FINGERPRINT = CODEC.store.current["ClaudeRequest"].fingerprint


def _intake() -> Intake:
    registry = Registry()
    registry.apply("acme", Partner("acme", "env:S", monthly_budget_usd=5.0))
    return Intake(registry, CODEC, SecretResolver({"S": SECRET.decode()}), 300.0, wall=lambda: NOW)


INTAKE = _intake()
BUILDER = OutcomeBuilder(PriceTable(), lambda: int(NOW * 1000))


def intake(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, value = data[0], data[1:]
    if flags & 1 and not value.startswith(SINGLE_OBJECT_MAGIC):
        value = SINGLE_OBJECT_MAGIC + FINGERPRINT + value  # reach the Avro body
    headers = signed_headers("acme", SECRET, value, NOW)
    if flags & 2:  # a replay: its count taken from the input, signed
        ts, sig = int(dict(headers)["x-timestamp"]), dict(headers)["x-signature"].decode()
        count_text = str(int.from_bytes(value[:16] or b"\x00", "big"))
        mac = replay_signature(SECRET, ts, int(count_text), sig)
        headers += [(H_REPLAY_COUNT, count_text.encode()), (H_REPLAY_SIGNATURE, mac.encode())]
    if flags & 4:
        headers += [(f"x-{i % 7}", value[:8]) for i in range(flags >> 3)]
    key = value[-16:] if flags & 8 else b"r1"
    record = SourceRecord("claude.requests.acme", 0, 1, key, value, headers)
    try:
        admitted = INTAKE.admit(record)
    except Rejected as exc:
        outcome = exc.outcome(BUILDER, record)
    else:
        outcome = BUILDER.failure(
            record,
            InvalidRequest("fuzz"),
            partner_id=admitted.partner_id,
            request_id=admitted.request_id,
            request=admitted.request,
            replay_count=admitted.replay_count,
            verified=True,
        )
    fit(BUILDER, outcome, None, CODEC, LIMIT)


POLICY = RegistryPolicy(REGISTRY_KEY, RefPolicy(("env:PARTNER_", "file:/run/secrets")))


def registry(data: bytes) -> None:
    if len(data) < 2:
        return
    split = min(data[0], len(data) - 1)
    key, value = data[1 : 1 + split], data[1 + split :]
    if value.startswith(b"\x00"):
        value = SINGLE_OBJECT_MAGIC + CODEC.store.current["PartnerConfig"].fingerprint + value[1:]
    stamp = int.from_bytes(key[:6] or b"\x01", "big")
    headers = registry_headers(REGISTRY_KEY, key, value or None, stamp)
    reg = Registry()
    for _ in range(2):  # twice: the second meets the first's state
        # what the follower refuses by name; anything else is a finding (the
        # follower would skip it too, logged as a bug: apply_record)
        try:
            pid, partner, stamp = admit_partner(
                CODEC, POLICY, reg, key or None, value or None, headers
            )
        except (SchemaError, ConfigError, AuthFailed):
            continue
        reg.apply(pid, partner, stamp)


TARGETS: dict[str, Callable[[bytes], None]] = {"intake": intake, "registry": registry}
