"""Dead-letter payloads, sealed.

A dead letter keeps the original record so ops can replay it, but the record
holds the partner's prompt: it is stored sealed with AES-256-GCM, bound to the
record it came from (topic, partition, offset), so a reader of `claude.dlq`
cannot read it and a sealed payload cannot be moved to another dead letter.

What seals it:

- the dead-letter keyring (`PIPELINE_DLQ_KEYS`, a secret reference to lines
  `key_id:secret`; the first line seals, every line opens). Rotating it is
  adding a line on top: dead letters sealed under older lines stay replayable
  for as long as their line is kept, whatever happens to partner secrets;
- without a keyring, the partner's signing secret (as before the keyring):
  a dead letter is stranded once that secret has been rotated out.

Inside the seal, with the payload, the worker states whether the record's
signature was verified. Replay re-signs a payload as the partner; only a
payload the worker sealed after verifying it may be replayed, so a forged
record can never be laundered into a genuine one, and nothing unsealed is
ever replayed.

Format: `CPS2`, one byte n, n bytes of key id (`partner` for a partner secret),
12 bytes of nonce, then AES-GCM of (one flags byte, the payload). `CPS1` (the
partner secret, no flags) is still opened, as unverified.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError, SecretError

if TYPE_CHECKING:
    from pipeline.partners import Registry

log = logging.getLogger("pipeline.security.sealing")

MAGIC_V1 = b"CPS1"
MAGIC_V2 = b"CPS2"
PARTNER_KEY_ID = "partner"
_VERIFIED = 0x01
_HKDF_INFO = b"claude-pipeline dead-letter payload v1"
_NONCE = 12


def _derive(secret: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(secret)


@dataclass(frozen=True)
class Keyring:
    """The dead-letter keys: (id, secret) pairs, the first one sealing."""

    keys: tuple[tuple[str, bytes], ...]

    @classmethod
    def parse(cls, text: bytes) -> Keyring:
        keys: list[tuple[str, bytes]] = []
        for n, raw in enumerate(text.decode("utf-8", "replace").splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key_id, sep, secret = line.partition(":")
            key_id, secret = key_id.strip(), secret.strip()
            if not sep or not key_id or len(key_id) > 64 or key_id == PARTNER_KEY_ID:
                raise ConfigError(f"dead-letter keyring line {n}: expected key_id:secret")
            if len(secret) < 16:
                raise ConfigError(
                    f"dead-letter keyring line {n} ({key_id}): a secret of at least 16 characters"
                )
            if any(k == key_id for k, _ in keys):
                raise ConfigError(f"dead-letter keyring line {n}: key id {key_id!r} repeated")
            keys.append((key_id, secret.encode()))
        if not keys:
            raise ConfigError("the dead-letter keyring has no key")
        return cls(tuple(keys))

    def get(self, key_id: str) -> bytes | None:
        return next((secret for k, secret in self.keys if k == key_id), None)


def seal(key_id: str, secret: bytes, payload: bytes, aad: bytes, *, verified: bool) -> bytes:
    """Encrypt and authenticate `payload` (and whether it was verified), bound to `aad`."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    ident = key_id.encode()
    nonce = os.urandom(_NONCE)
    flags = bytes([_VERIFIED if verified else 0])
    body = AESGCM(_derive(secret)).encrypt(nonce, flags + payload, aad)
    return MAGIC_V2 + bytes([len(ident)]) + ident + nonce + body


def is_sealed(blob: bytes) -> bool:
    return blob.startswith((MAGIC_V1, MAGIC_V2))


@dataclass(frozen=True)
class Opened:
    payload: bytes
    #: The worker verified the record's signature before it sealed the payload.
    verified: bool
    key_id: str


def _decrypt(secrets: Iterable[bytes], nonce: bytes, body: bytes, aad: bytes) -> bytes | None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    for secret in secrets:
        try:
            return AESGCM(_derive(secret)).decrypt(nonce, body, aad)
        except InvalidTag:
            continue
    return None


def open_sealed(
    blob: bytes, aad: bytes, *, keyring: Keyring | None, partner_secrets: Iterable[bytes]
) -> Opened:
    """Open a sealed payload; SecretError (naming why) if it is not sealed or no key fits."""
    if not is_sealed(blob):
        raise SecretError("the payload is not sealed: no worker wrote it, it is never replayed")
    if blob.startswith(MAGIC_V1):
        nonce, body = blob[4 : 4 + _NONCE], blob[4 + _NONCE :]
        plain = _decrypt(partner_secrets, nonce, body, aad)
        if plain is None:
            raise SecretError("cannot open the payload with the partner's secrets")
        return Opened(plain, verified=False, key_id=PARTNER_KEY_ID)
    n = blob[4] if len(blob) > 4 else 0
    key_id = blob[5 : 5 + n].decode("utf-8", "replace")
    nonce, body = blob[5 + n : 5 + n + _NONCE], blob[5 + n + _NONCE :]
    if key_id == PARTNER_KEY_ID:
        secrets = list(partner_secrets)
        why = "the partner's secrets"
    else:
        secret = keyring.get(key_id) if keyring is not None else None
        if secret is None:
            raise SecretError(f"sealed with dead-letter key {key_id!r}, not in the keyring")
        secrets, why = [secret], f"dead-letter key {key_id!r}"
    plain = _decrypt(secrets, nonce, body, aad)
    if plain is None or not plain:
        raise SecretError(f"cannot open the payload with {why}")
    return Opened(plain[1:], verified=bool(plain[0] & _VERIFIED), key_id=key_id)


def load_keyring(ref: str | None, resolve: Callable[[str], bytes]) -> Keyring | None:
    """The keyring a reference points at (None without one); ConfigError if unusable."""
    if ref is None:
        return None
    try:
        return Keyring.parse(resolve(ref))
    except SecretError as exc:
        raise ConfigError(f"PIPELINE_DLQ_KEYS: {exc}") from None


class Sealer:
    """Seals each dead letter's payload under the keyring's newest key, or, with
    no keyring, under its partner's signing secret; withholds it otherwise."""

    def __init__(
        self, keyring_ref: str | None, resolve: Callable[[str], bytes], registry: Registry
    ) -> None:
        self._keyring_ref = keyring_ref
        self._resolve = resolve
        self._registry = registry

    def seal(self, partner_id: str | None, payload: bytes, aad: bytes, verified: bool) -> bytes:
        try:
            keyring = load_keyring(self._keyring_ref, self._resolve)
        except ConfigError:
            log.exception("cannot read the dead-letter keyring: payload withheld")
            return b""
        if keyring is not None:
            key_id, secret = keyring.keys[0]
            return seal(key_id, secret, payload, aad, verified=verified)
        partner = self._registry.get(partner_id) if partner_id else None
        if partner is None:
            return b""  # no secret to seal with: the prompt is not stored in clear
        try:
            secret = self._resolve(partner.signing_secret_ref)
        except SecretError:
            return b""
        return seal(PARTNER_KEY_ID, secret, payload, aad, verified=verified)
