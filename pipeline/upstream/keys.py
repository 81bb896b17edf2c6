"""Which Anthropic API key a partner's requests spend.

A partner's key is its `api_key_ref`, else the default key. After `partners
rotate-key`, new requests use the new key at once; a request that already made
an attempt with the old key keeps it (its retries included) while the old key is
in its grace window, so calls in flight finish where they started. Each key has
its own rate-limit view (its limiter id is a hash of the key).
"""

from __future__ import annotations

from pipeline.errors import SecretError
from pipeline.limits.ratelimit import key_id
from pipeline.partners import Partner
from pipeline.records import Progress
from pipeline.security.signing import SecretResolver

#: Queue key of a partner whose API key cannot be read (its requests fail fast).
UNRESOLVED = "unresolved:"


class ApiKeys:
    """A partner's Anthropic key: its own `api_key_ref`, else the default key."""

    def __init__(self, resolver: SecretResolver, default_key: str | None) -> None:
        self._resolver = resolver
        self._default = default_key

    def for_partner(self, partner: Partner) -> str:
        """The partner's current key."""
        return self._resolve(partner.api_key_ref)

    def for_ref(self, ref: str | None) -> str:
        """The key a ref names (None or empty: the default key); SecretError if unreadable."""
        return self._resolve(ref)

    def _resolve(self, ref: str | None) -> str:
        if ref:
            return self._resolver.resolve(ref).decode()
        if self._default:
            return self._default
        raise SecretError(
            "no Anthropic API key: set ANTHROPIC_API_KEY or the partner's api_key_ref"
        )

    def _ref(self, partner: Partner, progress: Progress, now_ms: int) -> str | None:
        if progress.key_pinned and partner.api_key_in_grace(progress.key_ref, now_ms):
            return progress.key_ref
        return partner.api_key_ref

    def for_attempt(self, partner: Partner, progress: Progress, now_ms: int) -> str:
        """The key this attempt spends; the request keeps it for its retries while
        it is current or in its grace window."""
        ref = self._ref(partner, progress, now_ms)
        progress.key_ref, progress.key_pinned = ref, True
        return self._resolve(ref)

    def queue_key(self, partner: Partner, progress: Progress, now_ms: int) -> str:
        """The limiter's id of the key the request will spend (requests queue per
        key), or an `UNRESOLVED` marker when that key cannot be read."""
        try:
            return key_id(self._resolve(self._ref(partner, progress, now_ms)))
        except SecretError:
            return UNRESOLVED + partner.partner_id
