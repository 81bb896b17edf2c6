"""Kafka ACLs for a real cluster: each partner writes only its request topic and
reads only its response topic; the workers read requests and write outcomes.

Tansu cannot enforce ACLs or SASL, so these bindings are generated, printed,
unit-tested and applied to real Kafka (`topics create --acls --apply`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pipeline.config import Settings
from pipeline.errors import BrokerError, ConfigError
from pipeline.factory import client_config
from pipeline.partners import (
    DLQ_TOPIC,
    PARTNERS_TOPIC,
    REQUESTS_PREFIX,
    RESPONSES_PREFIX,
    STATE_TOPIC,
    USAGE_TOPIC,
    requests_topic,
    responses_topic,
    transactional_prefix,
)


@dataclass(frozen=True)
class Binding:
    principal: str  # e.g. User:acme
    resource: str  # TOPIC | GROUP | TRANSACTIONAL_ID
    name: str
    pattern: str  # LITERAL | PREFIXED
    operation: str  # READ | WRITE | DESCRIBE | CREATE
    permission: str = "ALLOW"
    host: str = "*"

    def __str__(self) -> str:
        return (
            f"{self.permission} {self.principal} {self.operation} "
            f"{self.resource}:{self.pattern}:{self.name} from {self.host}"
        )


#: Partners' Kafka users: a prefix no service principal has, so no partner id
#: (`admin`, `claude-pipeline`) can name a super user or the workers.
PARTNER_PRINCIPAL = "User:partner-{partner}"
#: Principals of the deployment's own services (`deploy init`): never a partner's.
SERVICE_PRINCIPALS = frozenset({"User:admin", "User:claude-pipeline", "User:CN=kafka"})


def principal_for(
    template: str, partner_id: str, reserved: Iterable[str] = SERVICE_PRINCIPALS
) -> str:
    """A partner's principal; ConfigError when the template could make it a
    service's (`User:{partner}` with a partner named `admin`)."""
    kind, sep, name = template.partition(":")
    if not sep or not kind or "{partner}" not in name:
        raise ConfigError("a principal template looks like User:partner-{partner}")
    principal = template.format(partner=partner_id)
    if principal in set(reserved):
        raise ConfigError(
            f"partner {partner_id!r} would be the principal {principal}, which a service "
            f"uses: give partners a prefix (--partner-principal {PARTNER_PRINCIPAL})"
        )
    return principal


#: Between a partner id and the rest of its consumer group names: a character
#: partner ids cannot contain, so one partner's prefix never covers another's
#: (with "-", the prefix "acme-" matched the groups of partner "acme-eu").
GROUP_SEPARATOR = "."


def partner_group_prefix(partner_id: str) -> str:
    """The prefix of every consumer group a partner may use (`<id>.<anything>`)."""
    return partner_id + GROUP_SEPARATOR


def partner_bindings(partner_id: str, principal: str) -> list[Binding]:
    """Write its requests, read its responses (with consumer groups named `<id>.*`)."""
    return [
        Binding(principal, "TOPIC", requests_topic(partner_id), "LITERAL", "WRITE"),
        Binding(principal, "TOPIC", requests_topic(partner_id), "LITERAL", "DESCRIBE"),
        Binding(principal, "TOPIC", responses_topic(partner_id), "LITERAL", "READ"),
        Binding(principal, "TOPIC", responses_topic(partner_id), "LITERAL", "DESCRIBE"),
        Binding(principal, "GROUP", partner_group_prefix(partner_id), "PREFIXED", "READ"),
    ]


def worker_bindings(principal: str, group_id: str) -> list[Binding]:
    """What `claude-pipeline worker` needs, and nothing more."""
    out = [
        Binding(principal, "TOPIC", REQUESTS_PREFIX, "PREFIXED", op)
        for op in ("READ", "DESCRIBE", "CREATE")
    ]
    out += [
        Binding(principal, "TOPIC", RESPONSES_PREFIX, "PREFIXED", op)
        for op in ("WRITE", "DESCRIBE", "CREATE")
    ]
    out += [
        Binding(principal, "TOPIC", USAGE_TOPIC, "LITERAL", "WRITE"),
        Binding(principal, "TOPIC", DLQ_TOPIC, "LITERAL", "WRITE"),
        Binding(principal, "TOPIC", PARTNERS_TOPIC, "LITERAL", "READ"),
        Binding(principal, "TOPIC", PARTNERS_TOPIC, "LITERAL", "DESCRIBE"),
        Binding(principal, "GROUP", group_id, "LITERAL", "READ"),
    ]
    out += [
        Binding(principal, "TOPIC", STATE_TOPIC, "LITERAL", op)
        for op in ("READ", "WRITE", "DESCRIBE")
    ]
    # Outcomes and done markers commit in transactions (pipeline/kafka/statelog.py):
    # a transactional id per worker incarnation, under the group's prefix.
    out += [
        Binding(principal, "TRANSACTIONAL_ID", transactional_prefix(group_id), "PREFIXED", op)
        for op in ("WRITE", "DESCRIBE")
    ]
    # Faust's own topics (its assignor's leader topic) are named after the group id.
    out += [
        Binding(principal, "TOPIC", f"{group_id}-", "PREFIXED", op)
        for op in ("READ", "WRITE", "DESCRIBE", "CREATE")
    ]
    return out


def all_bindings(
    partner_ids: Iterable[str], partner_template: str, worker_principal: str, group_id: str
) -> list[Binding]:
    bindings: list[Binding] = []
    reserved = SERVICE_PRINCIPALS | {worker_principal}
    for pid in sorted(partner_ids):
        bindings += partner_bindings(pid, principal_for(partner_template, pid, reserved))
    return bindings + worker_bindings(worker_principal, group_id)


def apply(settings: Settings, bindings: Sequence[Binding], timeout: float = 15.0) -> int:
    """Create the bindings through the admin API (idempotent); returns how many."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    acls = [
        AclBinding(
            ResourceType[b.resource],
            b.name,
            ResourcePatternType[b.pattern],
            b.principal,
            b.host,
            AclOperation[b.operation],
            AclPermissionType[b.permission],
        )
        for b in bindings
    ]
    admin = AdminClient(client_config(settings))
    try:
        for fut in admin.create_acls(acls, request_timeout=timeout).values():
            fut.result()
    except KafkaException as exc:
        raise BrokerError(
            f"cannot create ACLs (needs a cluster with an authorizer): {exc}"
        ) from exc
    return len(acls)


# -- SCRAM logins -----------------------------------------------------------------

SCRAM_MECHANISM = "SCRAM-SHA-512"
#: PBKDF2 iterations of a stored credential (Kafka's minimum is 4096).
SCRAM_ITERATIONS = 8192


def set_scram_user(settings: Settings, name: str, password: bytes, timeout: float = 15.0) -> None:
    """Create or rotate `name`'s SCRAM-SHA-512 credential on the cluster
    (AlterUserScramCredentials): its next login needs the new password."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    if not name or any(c.isspace() or c in ",=" for c in name):
        raise ConfigError(f"{name!r} is not a SCRAM user name (no spaces, commas or =)")
    if len(password) < 12:
        raise ConfigError("a SCRAM password must be at least 12 bytes")
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    admin = AdminClient(client_config(settings))
    try:
        for fut in admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(name, info, password)], request_timeout=timeout
        ).values():
            fut.result()
    except KafkaException as exc:
        raise BrokerError(f"cannot set {name}'s SCRAM credential: {exc.args[0]}") from None


def remove_scram_user(settings: Settings, name: str, timeout: float = 15.0) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AdminClient,
        ScramMechanism,
        UserScramCredentialDeletion,
    )

    admin = AdminClient(client_config(settings))
    try:
        for fut in admin.alter_user_scram_credentials(
            [UserScramCredentialDeletion(name, ScramMechanism.SCRAM_SHA_512)],
            request_timeout=timeout,
        ).values():
            fut.result()
    except KafkaException as exc:
        raise BrokerError(f"cannot remove {name}'s SCRAM credential: {exc.args[0]}") from None


def scram_users(settings: Settings, timeout: float = 15.0) -> dict[str, list[str]]:
    """Every SCRAM user and its mechanisms (never a password: Kafka keeps none)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AclOperation, AdminClient  # type: ignore[attr-defined]

    admin = AdminClient(client_config(settings))
    try:
        # Asked first: confluent-kafka 2.x frees memory twice when the broker refuses
        # DescribeUserScramCredentials (the process aborts): never ask without DESCRIBE.
        cluster = admin.describe_cluster(include_authorized_operations=True).result(timeout)
        if AclOperation.DESCRIBE not in (cluster.authorized_operations or ()):
            raise BrokerError(
                "this login may not list SCRAM users (it needs DESCRIBE on the cluster): "
                "run it as the admin"
            )
        # without a list of users it is one future of every user's description
        future = admin.describe_user_scram_credentials(request_timeout=timeout)
        described = future.result()  # type: ignore[union-attr]
    except KafkaException as exc:
        raise BrokerError(f"cannot list SCRAM users: {exc.args[0]}") from None
    return {
        user: sorted(str(i.mechanism.name) for i in d.scram_credential_infos)
        for user, d in sorted(described.items())
    }
