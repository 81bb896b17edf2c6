"""`claude-pipeline deploy init`: the credentials and certificates docker-compose needs.

Nothing guessable ships in the repository. This writes, into `deploy/secrets/`
(git-ignored; readable by the containers, which run under their own users, so
keep the host directory to yourself):

- a CA and the broker's certificate (CN=kafka, SAN kafka and localhost) as PEM
  key stores; Kafka listens with SASL_SSL for clients and SSL with client
  certificates for its controller (whose principal, User:CN=kafka, is the only
  super user besides admin: no anonymous super user);
- random SCRAM passwords for admin, the workers and each partner (independent:
  knowing one says nothing about another), and the Kafka config files using them;
- the pipeline's own keys: the registry key (signs claude.partners records)
  and the dead-letter keyring;
- each partner's signing secret, under `partners/`, the one directory partners'
  secret references may point into;
- a Grafana admin password (anonymous access stays off).

Run it once (`--force` replaces everything, which invalidates what was
handed out); `--partners a,b` adds partners later without touching the rest.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.partners import check_partner_id

#: Where the containers see the secrets directory.
MOUNT = "/secrets"
BROKER_HOST = "kafka"


@dataclass(frozen=True)
class Written:
    directory: Path
    created: list[str]
    partners: list[str]


def _password() -> str:
    return secrets.token_urlsafe(24)  # 192 bits


def _write(path: Path, text: str | bytes, created: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    created.append(str(path))


def _read(path: Path) -> str:
    return path.read_text().strip()


def _keep_or_make(path: Path, make: str, created: list[str]) -> str:
    if path.exists():
        return _read(path)
    _write(path, make + "\n", created)
    return make


# -- certificates --------------------------------------------------------------------


def _certificates(directory: Path, created: list[str]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "claude-pipeline CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca_usage, critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, BROKER_HOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(BROKER_HOST), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    plain = serialization.NoEncryption()
    # The CA's key is not kept: every container sees this directory, and a new
    # certificate is a `deploy init --force` away.
    _write(directory / "ca.pem", ca.public_bytes(pem), created)
    # Kafka's PEM key store: the private key, then the certificate chain.
    keystore = key.private_bytes(pem, pkcs8, plain) + cert.public_bytes(pem) + ca.public_bytes(pem)
    _write(directory / "kafka.pem", keystore, created)


# -- Kafka config ----------------------------------------------------------------------


def server_properties(admin_password: str) -> str:
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="admin" password="{admin_password}";'
    )
    return "\n".join(
        [
            "# Generated by `claude-pipeline deploy init`. Apache Kafka 3.9, KRaft, one node.",
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{BROKER_HOST}:9093",
            "listeners=SASL_SSL://:9092,CONTROLLER://:9093",
            f"advertised.listeners=SASL_SSL://{BROKER_HOST}:9092",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL",
            "inter.broker.listener.name=SASL_SSL",
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}",
            # The controller listener takes only the broker's own certificate.
            "listener.name.controller.ssl.client.auth=required",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={MOUNT}/kafka.pem",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={MOUNT}/ca.pem",
            "ssl.endpoint.identification.algorithm=https",
            "ssl.enabled.protocols=TLSv1.3,TLSv1.2",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            f"super.users=User:admin;User:CN={BROKER_HOST}",
            "allow.everyone.if.no.acl.found=false",
            "auto.create.topics.enable=false",
            "log.dirs=/var/lib/kafka/data",
            "num.partitions=4",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "",
        ]
    )


def client_properties(user: str, password: str) -> str:
    """For Kafka's own command-line tools (the kafka container's healthcheck, setup)."""
    return "\n".join(
        [
            "security.protocol=SASL_SSL",
            "sasl.mechanism=SCRAM-SHA-512",
            "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule "
            f'required username="{user}" password="{password}";',
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={MOUNT}/ca.pem",
            "",
        ]
    )


def pipeline_env(user: str, password: str) -> str:
    """What the pipeline's containers (workers, admin) are configured with."""
    return "\n".join(
        [
            f"KAFKA_BOOTSTRAP_SERVERS={BROKER_HOST}:9092",
            "KAFKA_SECURITY_PROTOCOL=SASL_SSL",
            "KAFKA_SASL_MECHANISM=SCRAM-SHA-512",
            f"KAFKA_SASL_USERNAME={user}",
            f"KAFKA_SASL_PASSWORD={password}",
            f"KAFKA_SSL_CA_LOCATION={MOUNT}/ca.pem",
            f"PIPELINE_REGISTRY_KEY=file:{MOUNT}/registry.key",
            f"PIPELINE_DLQ_KEYS=file:{MOUNT}/dlq.keys",
            f"PIPELINE_PARTNER_SECRETS=file:{MOUNT}/partners",
            "",
        ]
    )


def init(directory: Path, partners: Iterable[str] = (), *, force: bool = False) -> Written:
    """Write (or complete) the secrets directory; existing secrets are kept unless `force`."""
    ids = [check_partner_id(p) for p in partners]
    if force and directory.exists():
        for path in sorted(directory.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
    created: list[str] = []
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "kafka.pem").exists():
        _certificates(directory, created)
    admin = _keep_or_make(directory / "admin.password", _password(), created)
    worker = _keep_or_make(directory / "worker.password", _password(), created)
    _keep_or_make(directory / "grafana.password", _password(), created)
    _keep_or_make(directory / "registry.key", secrets.token_urlsafe(32), created)
    _keep_or_make(directory / "dlq.keys", f"k1:{secrets.token_urlsafe(32)}", created)
    for pid in ids:
        _keep_or_make(directory / "partners" / f"{pid}.signing", secrets.token_hex(32), created)
        _keep_or_make(directory / "partners" / f"{pid}.kafka-password", _password(), created)
    known = sorted(p.name.removesuffix(".kafka-password") for p in (directory / "partners").glob(
        "*.kafka-password"
    )) if (directory / "partners").exists() else []  # fmt: skip
    # Derived files: rewritten every time from the secrets above.
    for name, text in (
        ("server.properties", server_properties(admin)),
        ("admin.properties", client_properties("admin", admin)),
        ("admin.env", pipeline_env("admin", admin)),
        ("worker.env", pipeline_env("claude-pipeline", worker)),
        ("partners.list", "".join(f"{pid}\n" for pid in known)),
    ):
        _write(directory / name, text, created)
    return Written(directory, created, known)
