"""Registry integrity: signed records, newer only, key == partner_id, secrets where allowed."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from pipeline.errors import AuthFailed, ConfigError, SecretError
from pipeline.kafka.follower import admit_partner
from pipeline.partners import Partner, Registry
from pipeline.schemas import Codec
from pipeline.security.registryauth import (
    MAX_GRACE_S,
    RefPolicy,
    RegistryPolicy,
    registry_headers,
    verify_record,
)
from pipeline.security.signing import SecretResolver

KEY = b"the-registry-key"
CODEC = Codec()
POLICY = RegistryPolicy(KEY, RefPolicy(("env:PARTNER_", "file:/run/secrets")))


def _record(partner: Partner, key: bytes | None = None) -> tuple[bytes, bytes]:
    return (key or partner.partner_id.encode()), CODEC.encode("PartnerConfig", partner.to_record())


def _admit(registry: Registry, key: bytes, value: bytes | None, headers: list) -> Partner | None:  # type: ignore[type-arg]
    pid, partner, timestamp_ms = admit_partner(CODEC, POLICY, registry, key, value, headers)
    registry.apply(pid, partner, timestamp_ms)
    return partner


ACME = Partner("acme", "env:PARTNER_ACME", updated_at_ms=1_000)


def test_a_signed_record_is_applied_and_anything_else_is_not() -> None:
    registry = Registry()
    key, value = _record(ACME)
    assert _admit(registry, key, value, registry_headers(KEY, key, value, 1_000)) == ACME
    evil = ACME.with_(signing_secret_ref="env:PARTNER_KNOWN", updated_at_ms=2_000)
    key, value = _record(evil)
    for headers in (
        [],  # unsigned
        registry_headers(b"a guessed key", key, value, 2_000),
        registry_headers(KEY, key, value, 2_000)[:1],  # timestamp only
        [*registry_headers(KEY, key, value, 2_000), ("x-registry-signature", b"00")],
    ):
        with pytest.raises(AuthFailed):
            _admit(registry, key, value, headers)
    assert registry.get("acme") == ACME
    # a signature binds the value: another partner's config under the same signature fails
    signed = registry_headers(KEY, key, value, 2_000)
    other_value = CODEC.encode("PartnerConfig", evil.with_(weight=9).to_record())
    with pytest.raises(AuthFailed, match="mismatch"):
        verify_record(KEY, key, other_value, signed)


def test_old_records_produced_again_change_nothing() -> None:
    registry = Registry()
    old_key, old_value = _record(ACME)
    old_headers = registry_headers(KEY, old_key, old_value, 1_000)
    _admit(registry, old_key, old_value, old_headers)
    newer = ACME.with_(enabled=False, updated_at_ms=5_000)
    key, value = _record(newer)
    _admit(registry, key, value, registry_headers(KEY, key, value, 5_000))
    with pytest.raises(ConfigError, match="older than the config applied"):
        _admit(registry, old_key, old_value, old_headers)  # a captured enable, replayed
    # a tombstone signed before the partner was (re-)added does not remove it
    with pytest.raises(ConfigError, match="tombstone"):
        _admit(registry, b"acme", None, registry_headers(KEY, b"acme", None, 4_000))
    assert not registry.get("acme").enabled  # type: ignore[union-attr]
    assert _admit(registry, b"acme", None, registry_headers(KEY, b"acme", None, 6_000)) is None
    assert registry.get("acme") is None


def test_the_key_must_be_the_partner_id() -> None:
    # Before: a tombstone took its id from the key and an update from the value, so
    # a record keyed "other" carrying acme's config brought acme back after compaction.
    key, value = _record(ACME, key=b"other")
    with pytest.raises(ConfigError, match="is not its partner_id"):
        _admit(Registry(), key, value, registry_headers(KEY, key, value, 1_000))


@pytest.mark.parametrize(
    "ref",
    ["env:HOME", "file:/app/README.md", "file:/dev/zero", "file:/run/secrets/../../etc/passwd"],
)
def test_secrets_come_only_from_the_allowed_places(ref: str) -> None:
    partner = ACME.with_(signing_secret_ref=ref)
    key, value = _record(partner)
    with pytest.raises(ConfigError, match="outside the allowed secret locations"):
        _admit(Registry(), key, value, registry_headers(KEY, key, value, 1_000))
    assert RefPolicy(("file:/run/secrets",)).allows("file:/run/secrets/acme.key")
    assert not RefPolicy(("file:/run/secrets",)).allows("file:/run/secrets-evil/acme.key")


def test_grace_windows_are_capped() -> None:
    far = ACME.with_(
        previous_signing_secret_ref="env:PARTNER_OLD",
        previous_secret_expires_at_ms=ACME.updated_at_ms + MAX_GRACE_S * 1000 + 1,
    )
    key, value = _record(far)
    with pytest.raises(ConfigError, match="days after the change"):
        _admit(Registry(), key, value, registry_headers(KEY, key, value, 1_000))


def test_a_bad_prefix_list_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="PIPELINE_PARTNER_SECRETS"):
        RefPolicy.parse("vault:secret/acme")
    assert RefPolicy.parse("env:P_, file:/s").prefixes == ("env:P_", "file:/s")


def test_secret_files_must_be_small_regular_files(tmp_path: Path) -> None:
    # Before: file:/dev/zero read until the worker ran out of memory.
    resolver = SecretResolver({})
    with pytest.raises(SecretError, match="not a regular file"):
        resolver.resolve("file:/dev/zero")
    big = tmp_path / "big"
    big.write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(SecretError, match="at most"):
        resolver.resolve(f"file:{big}")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(SecretError, match="not a regular file"):
        resolver.resolve(f"file:{fifo}")  # would block forever


def test_refresh_rereads_changed_files_and_forgets_removed_ones(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_text("first")
    resolver = SecretResolver({}, recheck_s=3600)
    assert resolver.resolve(f"file:{path}") == b"first"
    path.write_text("second!")
    assert resolver.resolve(f"file:{path}") == b"first"  # within recheck_s: cached
    resolver.refresh()
    assert resolver.resolve(f"file:{path}") == b"second!"
    path.unlink()
    resolver.refresh()
    with pytest.raises(SecretError, match="cannot read"):
        resolver.resolve(f"file:{path}")


# -- issue 23: C, 4 and 7 -------------------------------------------------------


def _signed(partner: Partner, stamp: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    key, value = _record(partner)
    return key, value, registry_headers(KEY, key, value, stamp)


def test_a_secret_ref_with_a_nul_byte_is_skipped_and_the_next_record_applies() -> None:
    # Before: RefPolicy.allows -> os.path.realpath raised ValueError (embedded
    # null byte), which nothing caught: the follower died, and no worker started.
    from pipeline.kafka.follower import apply_record

    assert RefPolicy(("file:/run/secrets",)).allows("file:/run/secrets/a\x00b") is False
    registry, skipped = Registry(), []
    raw = {**ACME.to_record(), "signing_secret_ref": "file:/run/secrets/a\x00b"}
    key, value = b"acme", CODEC.encode("PartnerConfig", raw)
    headers = registry_headers(KEY, key, value, 1_000)
    assert not apply_record(
        CODEC, POLICY, registry, key, value, headers, 5, lambda: skipped.append(5)
    )
    assert skipped == [5]
    assert registry.get("acme") is None
    key, value, headers = _signed(ACME, 1_000)
    assert apply_record(CODEC, POLICY, registry, key, value, headers, 6)
    assert registry.get("acme") == ACME


def test_no_record_whatever_it_raises_stops_the_follower() -> None:
    from pipeline.kafka.follower import apply_record

    class Broken(RegistryPolicy):
        def admit(self, *args: object, **kw: object) -> int:
            raise RuntimeError("nobody foresaw this")

    skipped: list[int] = []
    key, value, headers = _signed(ACME, 1_000)
    registry = Registry()
    assert not apply_record(
        CODEC, Broken(KEY), registry, key, value, headers, 1, lambda: skipped.append(1)
    )
    assert skipped == [1]
    assert len(registry) == 0


def _replay(log: Sequence[tuple[bytes, bytes | None, list[tuple[str, bytes]]]]) -> Registry:
    """What a worker that reads `log` from the beginning applies."""
    from pipeline.kafka.follower import apply_record

    registry = Registry()
    for offset, (key, value, headers) in enumerate(log):
        apply_record(CODEC, POLICY, registry, key, value, headers, offset)
    return registry


def test_an_old_record_produced_again_after_a_removal_changes_nothing_across_restarts() -> None:
    # Before: after r2 and a tombstone, producing r1 again re-added the partner
    # with its old (possibly leaked) secret: with no current config there was
    # no "newer only" check.
    r1 = ACME.with_(signing_secret_ref="env:PARTNER_OLD", updated_at_ms=1_000)
    r2 = ACME.with_(updated_at_ms=2_000)
    removal = r2.with_(enabled=False, updated_at_ms=3_000, removed_at_ms=3_000)
    again = _signed(r1, 1_000)
    log = [_signed(r1, 1_000), _signed(r2, 2_000), _signed(removal, 3_000), again]
    running = _replay(log)
    assert running.get("acme") is None
    assert running.removed == {"acme": 3_000}
    # a worker started after compaction: the removal is acme's latest record
    # before the old one was produced again
    assert _replay([_signed(removal, 3_000), again]).get("acme") is None
    # a tombstone (as older tools wrote) also remembers what it removed
    tombstone = (b"acme", None, registry_headers(KEY, b"acme", None, 3_000))
    assert _replay([_signed(r1, 1_000), _signed(r2, 2_000), tombstone, again]).get("acme") is None
    # a genuinely newer registration brings the partner back
    back = ACME.with_(updated_at_ms=4_000)
    assert _replay([*log, _signed(back, 4_000)]).get("acme") == back


def test_partners_remove_writes_a_removal_record_not_a_tombstone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.config import Settings
    from pipeline.kafka import admin
    from pipeline.partners import load_partners, save_partners

    sent: list[list[object]] = []
    settings = Settings(partners_file=tmp_path / "partners.toml", profile="dev")
    save_partners(settings.partners_file, {"acme": ACME})
    monkeypatch.setattr(admin, "publish_partners", lambda s, c, items: sent.append(list(items)))
    admin.remove_partner(settings, CODEC, "acme")
    assert load_partners(settings.partners_file) == {}
    ((removal,),) = sent
    assert isinstance(removal, Partner)
    assert removal.removed_at_ms == removal.updated_at_ms > ACME.updated_at_ms
    assert removal.enabled is False


def test_partners_add_without_the_registry_key_is_refused_in_production(tmp_path: Path) -> None:
    # Before: it published an unsigned record that production workers ignore, and
    # logged that again at every start.
    from pipeline.config import Settings
    from pipeline.errors import ConfigError
    from pipeline.kafka.admin import add_partner, remove_partner, sync_partners
    from pipeline.partners import Partner
    from pipeline.schemas import Codec

    settings = Settings(partners_file=tmp_path / "partners.toml", bootstrap_servers="127.0.0.1:9")
    for change in (
        lambda: add_partner(settings, Codec(), Partner("acme", "env:PARTNER_ACME")),
        lambda: remove_partner(settings, Codec(), "acme"),
        lambda: sync_partners(settings, Codec()),
    ):
        with pytest.raises(ConfigError, match=r"^PIPELINE_REGISTRY_KEY is not set: production"):
            change()
    assert not settings.partners_file.exists()  # nothing half done
