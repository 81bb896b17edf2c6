"""Partner and topic administration: the file, the compacted topic, the topics."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from pipeline.config import Settings
from pipeline.errors import ConfigError
from pipeline.kafka.clients import SyncProducer, core_topics, ensure_topics, partner_topics
from pipeline.partners import (
    PARTNERS_TOPIC,
    Partner,
    check_partner_id,
    load_partners,
    save_partners,
)
from pipeline.schemas import Codec
from pipeline.security.registryauth import (
    RefPolicy,
    admin_key,
    check_grace,
    policy_for,
    registry_headers,
)
from pipeline.security.signing import SecretResolver


def signing_key(settings: Settings) -> bytes | None:
    """The registry key records are signed with; in the production profile there
    must be one (workers there apply nothing unsigned), refused before any change."""
    key = admin_key(settings, SecretResolver(settings.secret_env()).resolve)
    if key is None and settings.profile == "production":
        raise ConfigError(
            "PIPELINE_REGISTRY_KEY is not set: production workers apply only registry "
            "records signed with it; set it (env:NAME or file:PATH) as the workers have it"
        )
    return key


def publish_partners(settings: Settings, codec: Codec, partners: Iterable[Partner | str]) -> None:
    """Write partners (or a tombstone, given just an id) to the compacted topic,
    signed with the registry key when there is one."""
    key = signing_key(settings)
    producer = SyncProducer(settings)
    for item in partners:
        if isinstance(item, str):
            record_key, value = item.encode(), None
        else:
            record_key = item.partner_id.encode()
            value = codec.encode("PartnerConfig", item.to_record(), PARTNERS_TOPIC)
        headers = registry_headers(key, record_key, value, now_ms()) if key else []
        producer.produce(PARTNERS_TOPIC, value, key=record_key, headers=headers)
    producer.flush()


def checked(settings: Settings, partner: Partner) -> Partner:
    """What workers would refuse to apply is refused here, saying why."""
    signing_key(settings)
    RefPolicy.parse(settings.partner_secrets).check(partner)
    check_grace(partner)
    return partner


def provision(settings: Settings, partner_ids: Iterable[str]) -> list[str]:
    specs = list(core_topics(settings))
    for pid in partner_ids:
        specs.extend(partner_topics(settings, pid))
    return ensure_topics(settings, specs)


def now_ms() -> int:
    return int(time.time() * 1000)


def add_partner(settings: Settings, codec: Codec, partner: Partner) -> list[str]:
    return add_partners(settings, codec, [partner])


def add_partners(settings: Settings, codec: Codec, new: Sequence[Partner]) -> list[str]:
    """Register partners in one pass: their topics in one CreateTopics (batched),
    the file written once, their records in one flush. Returns the topics created."""
    partners = load_partners(settings.partners_file)
    for partner in new:
        if partner.partner_id in partners:
            raise ConfigError(
                f"partner {partner.partner_id!r} already exists in {settings.partners_file}"
            )
    at = now_ms()
    checked_new = [checked(settings, p.with_(updated_at_ms=at)) for p in new]
    created = provision(settings, [p.partner_id for p in checked_new])
    partners.update({p.partner_id: p for p in checked_new})
    save_partners(settings.partners_file, partners)
    publish_partners(settings, codec, checked_new)
    return created


def update_partner(settings: Settings, codec: Codec, partner_id: str, **changes: Any) -> Partner:
    partners = load_partners(settings.partners_file)
    check_partner_id(partner_id)
    if partner_id not in partners:
        raise ConfigError(f"no partner {partner_id!r} in {settings.partners_file}")
    updated = checked(settings, partners[partner_id].with_(**changes, updated_at_ms=now_ms()))
    partners[partner_id] = updated
    save_partners(settings.partners_file, partners)
    publish_partners(settings, codec, [updated])
    return updated


def remove_partner(settings: Settings, codec: Codec, partner_id: str) -> None:
    partners = load_partners(settings.partners_file)
    signing_key(settings)
    if partner_id not in partners:
        raise ConfigError(f"no partner {partner_id!r} in {settings.partners_file}")
    # A removal record, not a tombstone: compaction keeps a partner's latest
    # record, so workers started later still refuse its older records.
    stamp = now_ms()
    removal = partners.pop(partner_id).with_(
        enabled=False, updated_at_ms=stamp, removed_at_ms=stamp
    )
    save_partners(settings.partners_file, partners)
    publish_partners(settings, codec, [removal])


def sync_partners(settings: Settings, codec: Codec) -> list[Partner]:
    """Publish every partner of the file to the topic (and provision its topics)."""
    signing_key(settings)
    partners = load_partners(settings.partners_file)
    provision(settings, partners)
    publish_partners(settings, codec, partners.values())
    return list(partners.values())


def partners_on_topic(settings: Settings, codec: Codec) -> dict[str, Partner]:
    """What workers see: the compacted topic, latest record per partner."""
    from pipeline.kafka.follower import load_registry

    policy = policy_for(settings, SecretResolver(settings.secret_env()).resolve)
    return dict(load_registry(settings, codec, policy).partners)
