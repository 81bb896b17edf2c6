"""The partner registry's integrity: only admins change what workers apply.

Anyone who can write to `claude.partners` could otherwise point a partner's
signing secret at a value they know (`env:HOME`, `file:/app/README.md`) and
forge its requests, point their upstream key at another partner's, add a
previous secret with a far-future grace, or `file:/dev/zero` every worker out
of memory. So:

- every registry record is signed by the admin tools with the registry key
  (`PIPELINE_REGISTRY_KEY`, a secret reference): header `x-registry-signature`,
  lowercase hex HMAC-SHA256 over `claude.partners`, the record timestamp
  (`x-registry-timestamp`, ms), the key and the value (or a tombstone marker);
  workers apply nothing that fails, and log it;
- a record's key must be its partner_id; a config must be newer
  (`updated_at_ms`) than the one a worker holds, a tombstone's timestamp newer
  than the config it removes (an old record produced again changes nothing);
- `partners remove` writes a removal record (a PartnerConfig with
  `removed_at_ms`), not a tombstone: compaction keeps it as the partner's latest
  record, so a worker that starts later still knows the partner was removed and
  when, and refuses every older record for it (a re-produced one included);
- a partner's secret references must sit under the allowed prefixes
  (`PIPELINE_PARTNER_SECRETS`: `env:` name prefixes and `file:` directories);
- a rotation's grace window is at most `MAX_GRACE_S`.

What compaction means for "newer": a worker that starts reads only the latest
record per partner. A signed record produced again after a newer one is the
latest after compaction, so a worker started then applies it: rolling back
needs the registry key's signature on an old record plus write access to the
topic, and ends at the next change an admin makes. ACLs on `claude.partners`
(`topics create --acls`) keep the write access to admins.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pipeline.config import Settings
from pipeline.errors import AuthFailed, ConfigError, SecretError
from pipeline.partners import PARTNERS_TOPIC, Partner

H_REGISTRY_SIGNATURE = "x-registry-signature"
H_REGISTRY_TIMESTAMP = "x-registry-timestamp"
#: The longest grace window a rotation may give the secret or key it replaces.
MAX_GRACE_S = 7 * 86_400
DEFAULT_PREFIXES = ("env:PARTNER_", "file:secrets/")


def _message(timestamp_ms: int, key: bytes, value: bytes | None) -> bytes:
    body = b"\x00" if value is None else b"\x01" + value
    return b"%s\n%d\n%s\n%s" % (PARTNERS_TOPIC.encode(), timestamp_ms, key, body)


def registry_headers(
    admin_key: bytes, key: bytes, value: bytes | None, timestamp_ms: int
) -> list[tuple[str, bytes]]:
    """The headers that authenticate one registry record."""
    mac = hmac.new(admin_key, _message(timestamp_ms, key, value), hashlib.sha256).hexdigest()
    return [
        (H_REGISTRY_TIMESTAMP, str(timestamp_ms).encode()),
        (H_REGISTRY_SIGNATURE, mac.encode()),
    ]


def verify_record(
    admin_key: bytes, key: bytes, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> int:
    """The record's signed timestamp (ms); AuthFailed if it is not the admins'."""
    found: dict[str, list[bytes]] = {}
    for name, raw in headers or ():
        found.setdefault(name, []).append(bytes(raw or b""))
    stamps, macs = found.get(H_REGISTRY_TIMESTAMP, []), found.get(H_REGISTRY_SIGNATURE, [])
    if len(stamps) != 1 or len(macs) != 1:
        raise AuthFailed("not signed with the registry key (one timestamp, one signature)")
    try:
        timestamp_ms = int(stamps[0].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise AuthFailed("registry timestamp is not a number") from None
    expected = hmac.new(admin_key, _message(timestamp_ms, key, value), hashlib.sha256).digest()
    try:
        given = bytes.fromhex(macs[0].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise AuthFailed("registry signature is not hex") from None
    if not hmac.compare_digest(expected, given):
        raise AuthFailed("registry signature mismatch")
    return timestamp_ms


@dataclass(frozen=True)
class RefPolicy:
    """Where a partner's secrets may come from."""

    prefixes: tuple[str, ...] = DEFAULT_PREFIXES

    @classmethod
    def parse(cls, text: str | None) -> RefPolicy:
        if text is None:
            return cls()
        prefixes = tuple(p.strip() for p in text.split(",") if p.strip())
        for prefix in prefixes:
            scheme, sep, rest = prefix.partition(":")
            if scheme not in ("env", "file") or not sep or not rest:
                raise ConfigError(
                    f"PIPELINE_PARTNER_SECRETS: {prefix!r} is not env:NAME_PREFIX or file:DIR"
                )
        if not prefixes:
            raise ConfigError("PIPELINE_PARTNER_SECRETS allows nothing")
        return cls(prefixes)

    def allows(self, ref: str) -> bool:
        scheme, _, target = ref.partition(":")
        for prefix in self.prefixes:
            p_scheme, _, p_target = prefix.partition(":")
            if scheme != p_scheme:
                continue
            if scheme == "env" and target.startswith(p_target):
                return True
            if scheme == "file":
                try:
                    directory = os.path.realpath(p_target)
                    path = os.path.realpath(target)
                except (ValueError, OSError):  # a NUL byte, a path too long
                    return False
                if path.startswith(directory.rstrip(os.sep) + os.sep):
                    return True
        return False

    def check(self, partner: Partner) -> None:
        refs = {
            "signing_secret_ref": partner.signing_secret_ref,
            "previous_signing_secret_ref": partner.previous_signing_secret_ref,
            "api_key_ref": partner.api_key_ref,
            "previous_api_key_ref": partner.previous_api_key_ref or None,
        }
        for name, ref in refs.items():
            if ref is not None and not self.allows(ref):
                raise ConfigError(
                    f"partner {partner.partner_id}: {name} is outside the allowed secret "
                    f"locations ({', '.join(self.prefixes)}; PIPELINE_PARTNER_SECRETS)"
                )


def check_grace(partner: Partner) -> None:
    """Grace windows end at most MAX_GRACE_S after the change that opened them."""
    limit = partner.updated_at_ms + MAX_GRACE_S * 1000
    for name in ("previous_secret_expires_at_ms", "previous_api_key_expires_at_ms"):
        value = getattr(partner, name)
        if value is not None and value > limit:
            raise ConfigError(
                f"partner {partner.partner_id}: {name} is more than "
                f"{MAX_GRACE_S // 86_400} days after the change"
            )


@dataclass(frozen=True)
class RegistryPolicy:
    """What a worker checks before it applies a registry record."""

    admin_key: bytes | None
    refs: RefPolicy = RefPolicy()

    def admit(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        decoded: Partner | None,
        current: Mapping[str, Partner],
        removed: Mapping[str, int] | None = None,
    ) -> int:
        """The record's timestamp if it may be applied; AuthFailed or ConfigError if not."""
        if not key:
            raise ConfigError("a registry record without a key")
        timestamp_ms = 0
        if self.admin_key is not None:
            timestamp_ms = verify_record(self.admin_key, key, value, headers)
        pid = key.decode("utf-8", "replace")
        before = current.get(pid)
        if decoded is None:
            if before is not None and timestamp_ms and timestamp_ms <= before.updated_at_ms:
                raise ConfigError(f"a tombstone for {pid} older than its current config")
            return timestamp_ms
        if decoded.partner_id != pid:
            raise ConfigError(f"record key {pid!r} is not its partner_id {decoded.partner_id!r}")
        if before is not None and decoded.updated_at_ms < before.updated_at_ms:
            raise ConfigError(
                f"partner {pid}: updated_at_ms {decoded.updated_at_ms} is older than the "
                f"config applied ({before.updated_at_ms})"
            )
        gone = (removed or {}).get(pid)
        if gone is not None and decoded.updated_at_ms <= gone:
            # an old record produced again after a removal: the partner stays gone
            raise ConfigError(
                f"partner {pid}: updated_at_ms {decoded.updated_at_ms} is not newer than "
                f"its removal ({gone})"
            )
        self.refs.check(decoded)
        check_grace(decoded)
        return timestamp_ms


def policy_for(settings: Settings, resolve: Callable[[str], bytes]) -> RegistryPolicy:
    """The checks a worker applies, from its settings (ConfigError if unusable)."""
    return RegistryPolicy(admin_key(settings, resolve), RefPolicy.parse(settings.partner_secrets))


def admin_key(settings: Settings, resolve: Callable[[str], bytes]) -> bytes | None:
    if settings.registry_key_ref is None:
        return None
    try:
        return resolve(settings.registry_key_ref)
    except SecretError as exc:
        raise ConfigError(f"PIPELINE_REGISTRY_KEY: {exc}") from None
