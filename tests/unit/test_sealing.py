"""Dead-letter sealing: keyring, partner secrets, the verified flag, and what never opens."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError, SecretError
from pipeline.security.sealing import PARTNER_KEY_ID, Keyring, open_sealed, seal

SECRET = b"partner-signing-secret"
AAD = b"claude.requests.acme|0|7"
RING = Keyring.parse(b"k2:the-second-dead-letter-key\nk1:the-first-dead-letter-key\n")


def test_a_keyring_payload_opens_with_any_of_its_keys_and_only_at_its_source() -> None:
    old = seal("k1", RING.keys[1][1], b"the prompt", AAD, verified=True)
    new = seal(*RING.keys[0], b"the prompt", AAD, verified=False)
    assert b"the prompt" not in old
    opened = open_sealed(old, AAD, keyring=RING, partner_secrets=[])
    assert (opened.payload, opened.verified, opened.key_id) == (b"the prompt", True, "k1")
    assert not open_sealed(new, AAD, keyring=RING, partner_secrets=[]).verified
    with pytest.raises(SecretError, match="cannot open"):  # moved to another record
        open_sealed(old, b"claude.requests.acme|0|8", keyring=RING, partner_secrets=[])
    dropped = Keyring.parse(b"k2:the-second-dead-letter-key\n")
    with pytest.raises(SecretError, match="'k1', not in the keyring"):
        open_sealed(old, AAD, keyring=dropped, partner_secrets=[])


def test_partner_secret_sealing_opens_with_the_current_or_previous_secret() -> None:
    sealed = seal(PARTNER_KEY_ID, SECRET, b"p", AAD, verified=True)
    assert open_sealed(sealed, AAD, keyring=None, partner_secrets=[b"new", SECRET]).payload == b"p"
    with pytest.raises(SecretError, match="partner's secrets"):
        open_sealed(sealed, AAD, keyring=RING, partner_secrets=[b"new"])


def test_nothing_unsealed_ever_opens() -> None:
    # Before: an unsealed payload passed through as-is, so anyone who could write
    # to claude.dlq could have plaintext replayed (and re-signed) as a partner.
    with pytest.raises(SecretError, match="not sealed"):
        open_sealed(b"plain text request", AAD, keyring=RING, partner_secrets=[SECRET])


def test_the_verified_flag_cannot_be_flipped() -> None:
    sealed = bytearray(seal("k1", RING.keys[1][1], b"p", AAD, verified=False))
    sealed[-20] ^= 0x01  # any change to the ciphertext (flags included) fails the tag
    with pytest.raises(SecretError):
        open_sealed(bytes(sealed), AAD, keyring=RING, partner_secrets=[])


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (b"", "no key"),
        (b"k1\n", "expected key_id:secret"),
        (b"k1:short\n", "at least 16"),
        (b"k1:the-first-dead-letter-key\nk1:the-other-dead-letter-key\n", "repeated"),
        (b"partner:the-first-dead-letter-key\n", "expected key_id:secret"),
    ],
)
def test_a_bad_keyring_says_which_line(text: bytes, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Keyring.parse(text)
