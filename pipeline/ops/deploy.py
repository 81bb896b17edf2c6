"""`claude-pipeline deploy init`: the credentials and certificates docker-compose needs.

Nothing guessable ships in the repository. This writes, into `deploy/secrets/`
(git-ignored; every file 0600 and every directory 0700 whatever the umask, owned
by whoever runs it, which is the user compose runs the containers as):

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

Those live in `store/`, which no container mounts. Each service mounts one
directory of copies holding only what it needs (`SERVICES` says what), laid out
as `store/` is, so the same `/secrets/...` paths work in every container:
whoever takes over a worker (it parses hostile records) or Grafana (a web app)
finds no super user's password, no broker key and no other service's secret.
`handout/<id>/` is what a partner is given: its signing secret, its Kafka
password (user `partner-<id>`) and the CA.

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


#: The SCRAM user of a partner (its principal is User:<this>; see acls.py).
def partner_user(partner_id: str) -> str:
    return "partner-" + partner_id


def _private_dir(path: Path) -> None:
    """A directory only its owner can enter (mkdir's mode is subject to the umask)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


def _write(path: Path, text: str | bytes, created: list[str]) -> None:
    _private_dir(path.parent)
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # a file that existed keeps its mode otherwise
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
    # The CA's key is not kept: a new certificate is a `deploy init --force` away.
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


#: What each service's directory holds (paths relative to `store/`; a trailing
#: "/" copies a directory's files matching the suffix after it). Nothing else:
#: tests/unit/test_deploy.py checks the compose file mounts only these.
SERVICES: dict[str, tuple[str, ...]] = {
    # the broker: its key store, the CA, and the admin password it formats with
    "kafka": ("ca.pem", "kafka.pem", "admin.password", "server.properties", "admin.properties"),
    # SCRAM users: the workers' and the partners' Kafka passwords, as admin
    "setup": (
        "ca.pem",
        "admin.properties",
        "worker.password",
        "partners.list",
        "partners/*.kafka-password",
    ),
    # workers: their own Kafka credential, the registry key (HMAC: verifying
    # needs the key), the dead-letter keyring, partners' signing secrets
    "worker": ("ca.pem", "worker.env", "registry.key", "dlq.keys", "partners/*.signing"),
    # admin tools: the super user, signing registry records, opening and
    # replaying dead letters (a replay is signed with the partner's secret)
    "admin": ("ca.pem", "admin.env", "registry.key", "dlq.keys", "partners/*.signing"),
    # Grafana: its own admin password, nothing of the pipeline's
    "grafana": ("grafana.password",),
}
STORE = "store"
HANDOUT = "handout"

#: Files an earlier `deploy init` wrote at the top level, moved into `store/`.
_LEGACY = (
    "ca.pem", "kafka.pem", "admin.password", "worker.password", "grafana.password",
    "registry.key", "dlq.keys", "partners",
)  # fmt: skip


#: Derived files an earlier run wrote at the top level (they quote passwords).
_LEGACY_DERIVED = (
    "server.properties", "admin.properties", "admin.env", "worker.env", "partners.list",
)  # fmt: skip


def _migrate(directory: Path) -> None:
    store = directory / STORE
    for name in _LEGACY:
        old = directory / name
        if old.exists() and not (store / name).exists():
            _private_dir(store)
            os.replace(old, store / name)
    for name in _LEGACY_DERIVED:
        (directory / name).unlink(missing_ok=True)


def _copies(store: Path, entries: Iterable[str]) -> list[Path]:
    out: list[Path] = []
    for entry in entries:
        out.extend(sorted(store.glob(entry)) if "*" in entry else [store / entry])
    return out


def _fill(target: Path, store: Path, files: Iterable[Path], created: list[str]) -> None:
    """`target` holds exactly `files` (copies, same layout as the store)."""
    if target.exists():
        for path in sorted(target.rglob("*"), reverse=True):
            path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
    _private_dir(target)
    for path in files:
        _write(target / path.relative_to(store), path.read_bytes(), created)


def init(directory: Path, partners: Iterable[str] = (), *, force: bool = False) -> Written:
    """Write (or complete) the secrets directory; existing secrets are kept unless `force`."""
    ids = [check_partner_id(p) for p in partners]
    if force and directory.exists():
        for path in sorted(directory.rglob("*"), reverse=True):
            path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
    created: list[str] = []
    _private_dir(directory)
    _migrate(directory)
    store = directory / STORE
    _private_dir(store)
    if not (store / "kafka.pem").exists():
        _certificates(store, created)
    admin = _keep_or_make(store / "admin.password", _password(), created)
    worker = _keep_or_make(store / "worker.password", _password(), created)
    _keep_or_make(store / "grafana.password", _password(), created)
    _keep_or_make(store / "registry.key", secrets.token_urlsafe(32), created)
    _keep_or_make(store / "dlq.keys", f"k1:{secrets.token_urlsafe(32)}", created)
    for pid in ids:
        _keep_or_make(store / "partners" / f"{pid}.signing", secrets.token_hex(32), created)
        _keep_or_make(store / "partners" / f"{pid}.kafka-password", _password(), created)
    known = sorted(p.name.removesuffix(".kafka-password") for p in (store / "partners").glob(
        "*.kafka-password"
    )) if (store / "partners").exists() else []  # fmt: skip
    # Derived files: rewritten every time from the secrets above.
    for name, text in (
        ("server.properties", server_properties(admin)),
        ("admin.properties", client_properties("admin", admin)),
        ("admin.env", pipeline_env("admin", admin)),
        ("worker.env", pipeline_env("claude-pipeline", worker)),
        ("partners.list", "".join(f"{pid}\n" for pid in known)),
    ):
        _write(store / name, text, created)
    for path in directory.rglob("*"):  # older runs wrote 0644
        path.chmod(0o700 if path.is_dir() else 0o600)
    for service, entries in SERVICES.items():
        _fill(directory / service, store, _copies(store, entries), created)
    for pid in known:
        handout = directory / HANDOUT / pid
        _fill(handout, store, [], created)
        for path in [store / "ca.pem", *_copies(store, [f"partners/{pid}.*"])]:
            _write(handout / path.name, path.read_bytes(), created)
        _write(handout / "kafka.user", partner_user(pid) + "\n", created)
    return Written(directory, created, known)


def compose_env(path: Path, uid: int | None = None, gid: int | None = None) -> None:
    """Set PIPELINE_UID and PIPELINE_GID in compose's `.env` (other lines kept):
    the containers run as the user who owns the secrets, which only it can read."""
    values = {
        "PIPELINE_UID": str(os.getuid() if uid is None else uid),
        "PIPELINE_GID": str(os.getgid() if gid is None else gid),
    }
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [line for line in lines if line.partition("=")[0].strip() not in values]
    path.write_text("\n".join([*kept, *(f"{k}={v}" for k, v in values.items())]) + "\n")
