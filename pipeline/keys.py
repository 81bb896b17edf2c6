"""Which Anthropic API key a partner's requests spend."""

from __future__ import annotations

from pipeline.errors import SecretError
from pipeline.partners import Partner
from pipeline.ratelimit import key_id
from pipeline.security import SecretResolver

#: Queue key of a partner whose API key cannot be read (its requests fail fast).
UNRESOLVED = "unresolved:"


class ApiKeys:
    """A partner's Anthropic key: its own `api_key_ref`, else the default key."""

    def __init__(self, resolver: SecretResolver, default_key: str | None) -> None:
        self._resolver = resolver
        self._default = default_key

    def for_partner(self, partner: Partner) -> str:
        if partner.api_key_ref:
            return self._resolver.resolve(partner.api_key_ref).decode()
        if self._default:
            return self._default
        raise SecretError(
            "no Anthropic API key: set ANTHROPIC_API_KEY or the partner's api_key_ref"
        )

    def queue_key(self, partner: Partner) -> str:
        """The limiter's id of the partner's key (requests queue per key), or an
        `UNRESOLVED` marker when the key cannot be read."""
        try:
            return key_id(self.for_partner(partner))
        except SecretError:
            return UNRESOLVED + partner.partner_id
