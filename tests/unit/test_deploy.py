"""docker-compose and deploy/: no guessable credential, no plaintext listener, no
anonymous super user, no anonymous Grafana admin; the generated TLS works."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.ops.deploy import init

ROOT = Path(__file__).resolve().parents[2]
#: What shipped before: each one, anywhere in the deployment, fails the check.
KNOWN_DEFAULTS = ("admin-secret", "worker-secret", "partner-secret", "change-me", "sk-ant")


def _properties(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("deploy") / "secrets"
    init(directory, ["acme", "acme-eu", "globex"])
    return directory


def test_every_credential_is_random_and_independent(secrets_dir: Path) -> None:
    # Before: partner passwords were ${PARTNER_PASSWORD}-<id> (one partner could
    # derive every other's) and the admin password was written in the repo.
    files = [
        "admin.password", "worker.password", "grafana.password", "registry.key",
        "partners/acme.kafka-password", "partners/acme-eu.kafka-password",
        "partners/globex.kafka-password", "partners/acme.signing",
    ]  # fmt: skip
    values = [(secrets_dir / "store" / f).read_text().strip() for f in files]
    assert len(set(values)) == len(values)
    assert all(len(v) >= 32 for v in values)
    for value in values:
        others = [v for v in values if v != value]
        assert not any(value in o or o in value for o in others)  # none derived from another


def test_rerunning_keeps_secrets_and_adds_partners(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    init(directory, ["acme"])
    store = directory / "store"
    admin = (store / "admin.password").read_text()
    acme = (store / "partners/acme.kafka-password").read_text()
    init(directory, ["globex"])
    assert (store / "admin.password").read_text() == admin
    assert (store / "partners/acme.kafka-password").read_text() == acme
    assert (directory / "setup/partners.list").read_text().split() == ["acme", "globex"]
    assert (directory / "setup/partners/globex.kafka-password").exists()
    init(directory, force=True)
    assert (store / "admin.password").read_text() != admin
    assert (directory / "setup/partners.list").read_text().split() == []
    assert not (directory / "worker/partners/acme.signing").exists()


def test_kafka_listens_only_over_tls_with_no_anonymous_super_user(secrets_dir: Path) -> None:
    props = _properties(secrets_dir / "kafka/server.properties")
    protocols = {p.partition(":")[2] for p in props["listener.security.protocol.map"].split(",")}
    assert protocols <= {"SASL_SSL", "SSL"}, protocols
    listeners = props["listeners"].split(",")
    assert all(not entry.startswith(("PLAINTEXT", "SASL_PLAINTEXT")) for entry in listeners)
    assert "PLAINTEXT" not in props["advertised.listeners"].replace("SASL_SSL", "")
    assert "ANONYMOUS" not in props["super.users"]
    assert props["super.users"] == "User:admin;User:CN=kafka"
    assert props["listener.name.controller.ssl.client.auth"] == "required"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["ssl.endpoint.identification.algorithm"] == "https"
    admin = (secrets_dir / "store/admin.password").read_text().strip()
    assert f'password="{admin}"' in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    for env in ("worker/worker.env", "admin/admin.env"):
        values = _properties(secrets_dir / env)
        assert values["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert values["KAFKA_SSL_CA_LOCATION"] == "/secrets/ca.pem"
        assert values["PIPELINE_REGISTRY_KEY"].startswith("file:/secrets/")


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> dict[str, Any]:
    """A TLS handshake over loopback, the client asking for host "kafka"; the
    certificate the client saw."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname="kafka") as tls,
        ):
            tls.sendall(b"x")
            peer: dict[str, Any] = tls.getpeercert()  # type: ignore[assignment]
    finally:
        thread.join(5)
        listener.close()
    return peer


def test_the_broker_certificate_serves_tls_to_a_client_trusting_the_ca(
    secrets_dir: Path,
) -> None:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(secrets_dir / "kafka/kafka.pem")  # Kafka's PEM key store
    trusting = ssl.create_default_context(cafile=str(secrets_dir / "worker/ca.pem"))
    peer = _handshake(server_ctx, trusting)  # chain and SAN verified
    assert dict(x[0] for x in peer["subject"])["commonName"] == "kafka"
    stranger = ssl.create_default_context()  # system CAs only
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server_ctx, stranger)


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_the_compose_file_holds_no_credential_and_publishes_nothing_openly() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for known in KNOWN_DEFAULTS:
        assert known not in text, known
    assert "User:ANONYMOUS" not in text
    assert "SASL_PLAINTEXT" not in text
    services = _compose()["services"]
    for name, service in services.items():
        env = service.get("environment") or {}
        for key, value in env.items():
            if "PASSWORD" in key or "SECRET" in key:
                assert key.endswith("__FILE"), f"{name}: {key} is given in clear"
                assert str(value).startswith("/secrets/"), (name, key)
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    assert "ports" not in services["kafka"]
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in grafana
    assert grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/secrets/grafana.password"
    # the pipeline's containers take their Kafka credentials from the generated files
    assert services["worker-1"]["env_file"] == ["deploy/secrets/worker/worker.env"]
    assert services["admin"]["env_file"] == ["deploy/secrets/admin/admin.env"]
    assert "/secrets/server.properties" in " ".join(services["kafka"]["command"])


def test_nothing_secret_is_committed_under_deploy() -> None:
    for path in (ROOT / "deploy").rglob("*"):
        if path.is_file() and "secrets" not in path.parts:
            text = path.read_text(errors="replace")
            for known in KNOWN_DEFAULTS:
                assert known not in text, (path, known)
            assert "password=" not in text.replace("password=$(cat", ""), path
    assert "deploy/secrets/" in (ROOT / ".gitignore").read_text()


# -- issue 23, finding 1: secrets are private, and each service mounts its own --


def test_every_secret_is_0600_and_every_directory_0700_whatever_the_umask(
    tmp_path: Path,
) -> None:
    # Before: 0644 files in a 0755 directory (umask 022): any local user, and
    # every container, read every secret.
    old = os.umask(0o022)
    try:
        directory = tmp_path / "s"
        init(directory, ["acme"])
        (directory / "store" / "admin.password").chmod(0o644)  # as an older run left it
        init(directory, ["globex"])
    finally:
        os.umask(old)
    paths = [directory, *directory.rglob("*")]
    assert len(paths) > 30
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


#: What no service but the named ones may find in its secrets directory.
_ONLY = {
    "admin.password": {"kafka"},  # the super user's password (and in these files:)
    "admin.properties": {"kafka", "setup"},
    "admin.env": {"admin"},
    "server.properties": {"kafka"},
    "kafka.pem": {"kafka"},  # the broker's private key
    "worker.password": {"setup"},
    "worker.env": {"worker"},
    "registry.key": {"worker", "admin"},
    "dlq.keys": {"worker", "admin"},
    "grafana.password": {"grafana"},
}


def _mounted(service: dict[str, Any]) -> list[str]:
    """The deploy/secrets directories a compose service mounts."""
    out = []
    for volume in service.get("volumes") or []:
        source = str(volume).split(":")[0]
        if "deploy/secrets" in source:
            out.append(source.removeprefix("./deploy/secrets").strip("/"))
    return out


def test_each_service_mounts_only_the_secrets_it_needs(secrets_dir: Path) -> None:
    services = _compose()["services"]
    expected = {
        "kafka": ["kafka"], "setup": ["setup"], "admin": ["admin"], "topics": ["admin"],
        "worker-1": ["worker"], "worker-2": ["worker"], "grafana": ["grafana"],
        "sim": [], "prometheus": [],
    }  # fmt: skip
    assert {name: _mounted(s) for name, s in services.items()} == expected
    for name, service in services.items():
        for env_file in service.get("env_file") or []:
            (mount,) = _mounted(service) or [""]
            assert env_file.startswith(f"deploy/secrets/{mount}/"), (name, env_file)
    contents = {
        d.name: {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}
        for d in secrets_dir.iterdir()
        if d.name not in ("store", "handout")
    }
    assert contents["grafana"] == {"grafana.password"}  # nothing of ours
    assert not any(f.endswith(".kafka-password") for f in contents["worker"])
    assert not any(f.endswith(".signing") for f in contents["setup"] | contents["kafka"])
    for directory, files in contents.items():
        for secret, allowed in _ONLY.items():
            assert secret not in files or directory in allowed, (directory, secret)
    # a partner's handout: its own secrets and the CA, nobody else's
    assert {p.name for p in (secrets_dir / "handout/acme").iterdir()} == {
        "acme.signing", "acme.kafka-password", "ca.pem", "kafka.user",
    }  # fmt: skip
    assert (secrets_dir / "handout/acme/kafka.user").read_text().strip() == "partner-acme"


def test_containers_run_as_the_owner_of_the_secrets(tmp_path: Path) -> None:
    from pipeline.ops.deploy import compose_env

    env = tmp_path / ".env"
    env.write_text("OTHER=1\nPIPELINE_UID=5\n")
    compose_env(env, uid=1234, gid=99)
    assert env.read_text().split() == ["OTHER=1", "PIPELINE_UID=1234", "PIPELINE_GID=99"]
    services = _compose()["services"]
    for name in ("kafka", "setup", "admin", "topics", "worker-1", "worker-2", "grafana"):
        assert str(services[name]["user"]).startswith("${PIPELINE_UID:?"), name


# -- issue 23, finding 3: no partner can be a service's Kafka user --------------


def test_a_partner_named_like_a_service_cannot_take_over_its_kafka_user() -> None:
    # Before: `deploy init --partners admin` was accepted and setup.sh set the
    # super user's SCRAM password to that partner's; claude-pipeline likewise.
    from pipeline.errors import ConfigError
    from pipeline.kafka.acls import all_bindings, principal_for

    for service in ("admin", "claude-pipeline"):
        principal = principal_for("User:partner-{partner}", service)
        assert principal == f"User:partner-{service}"
        with pytest.raises(ConfigError, match="a service uses"):
            principal_for("User:{partner}", service)
        bindings = all_bindings([service], "User:partner-{partner}", "User:claude-pipeline", "g")
        assert {
            b.principal for b in bindings if "requests" in b.name and b.operation == "WRITE"
        } == {f"User:partner-{service}"}
    with pytest.raises(ConfigError):
        all_bindings(["workers"], "User:{partner}", "User:workers", "g")
    setup = (ROOT / "deploy/kafka/setup.sh").read_text()
    assert 'add_user "partner-$partner"' in setup
