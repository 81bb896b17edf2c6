"""docker-compose and deploy/: no guessable credential, no plaintext listener, no
anonymous super user, no anonymous Grafana admin; the generated TLS works."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.deploy import init

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
    values = [(secrets_dir / f).read_text().strip() for f in files]
    assert len(set(values)) == len(values)
    assert all(len(v) >= 32 for v in values)
    for value in values:
        others = [v for v in values if v != value]
        assert not any(value in o or o in value for o in others)  # none derived from another


def test_rerunning_keeps_secrets_and_adds_partners(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    init(directory, ["acme"])
    admin = (directory / "admin.password").read_text()
    acme = (directory / "partners/acme.kafka-password").read_text()
    init(directory, ["globex"])
    assert (directory / "admin.password").read_text() == admin
    assert (directory / "partners/acme.kafka-password").read_text() == acme
    assert (directory / "partners.list").read_text().split() == ["acme", "globex"]
    init(directory, force=True)
    assert (directory / "admin.password").read_text() != admin
    assert (directory / "partners.list").read_text().split() == []


def test_kafka_listens_only_over_tls_with_no_anonymous_super_user(secrets_dir: Path) -> None:
    props = _properties(secrets_dir / "server.properties")
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
    admin = (secrets_dir / "admin.password").read_text().strip()
    assert f'password="{admin}"' in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    for env in ("worker.env", "admin.env"):
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
    server_ctx.load_cert_chain(secrets_dir / "kafka.pem")  # Kafka's PEM key store
    trusting = ssl.create_default_context(cafile=str(secrets_dir / "ca.pem"))
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
    assert services["worker-1"]["env_file"] == ["deploy/secrets/worker.env"]
    assert services["admin"]["env_file"] == ["deploy/secrets/admin.env"]
    assert "/secrets/server.properties" in " ".join(services["kafka"]["command"])


def test_nothing_secret_is_committed_under_deploy() -> None:
    for path in (ROOT / "deploy").rglob("*"):
        if path.is_file() and "secrets" not in path.parts:
            text = path.read_text(errors="replace")
            for known in KNOWN_DEFAULTS:
                assert known not in text, (path, known)
            assert "password=" not in text.replace("password=$(cat", ""), path
    assert "deploy/secrets/" in (ROOT / ".gitignore").read_text()
