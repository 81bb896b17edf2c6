"""The Apache Kafka broker's configuration and its one-line refusals (no JVM started)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.dev.kafkabroker import Credentials, KafkaBroker, classpath, cluster_id
from pipeline.errors import ConfigError


def test_cluster_ids_never_look_like_an_option() -> None:
    ids = {cluster_id() for _ in range(2_000)}
    assert len(ids) == 2_000
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids)


def test_plaintext_is_one_node_with_the_pipeline_s_record_limit(tmp_path: Path) -> None:
    props = KafkaBroker(9999, workdir=tmp_path).properties(tmp_path / "data")
    assert props["process.roles"] == "broker,controller"
    assert props["listener.security.protocol.map"] == "CLIENT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    assert props["advertised.listeners"] == "CLIENT://127.0.0.1:9999"
    assert props["auto.create.topics.enable"] == "false"
    assert int(props["message.max.bytes"]) >= 32 * 1024 * 1024
    assert "authorizer.class.name" not in props


def test_sasl_is_scram_with_the_authorizer_on_and_nothing_allowed_by_default(
    tmp_path: Path,
) -> None:
    creds = Credentials("admin", "s3cret-admin-pass")
    props = KafkaBroker(workdir=tmp_path, sasl=creds).properties(tmp_path / "data")
    assert props["listener.security.protocol.map"] == (
        "CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT"
    )
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:admin"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    # the controller listener authenticates too (left open, the broker registers
    # as ANONYMOUS and retries forever)
    assert props["sasl.mechanism.controller.protocol"] == "PLAIN"
    assert (
        'user_admin="s3cret-admin-pass"' in props["listener.name.controller.plain.sasl.jaas.config"]
    )


def test_extra_settings_win(tmp_path: Path) -> None:
    broker = KafkaBroker(workdir=tmp_path, settings={"log.cleaner.backoff.ms": "200"})
    assert broker.properties(tmp_path)["log.cleaner.backoff.ms"] == "200"


def test_no_maven_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_KAFKA_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # neither mvn nor java
    with pytest.raises(
        ConfigError, match=r"^the kafka engine needs Maven 3 .*\(mvn is not on PATH\)$"
    ):
        classpath()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_the_broker_command_refuses_what_it_cannot_do_in_one_line() -> None:
    tansu = _cli("broker", "--sasl")
    assert tansu.returncode == 2
    assert (
        tansu.stderr.strip()
        .splitlines()[-1]
        .endswith("--sasl needs --engine kafka (Tansu has no SASL)")
    )
    no_login = _cli("broker", "--engine", "kafka", "--sasl", env={"PATH": "/usr/bin:/bin"})
    assert no_login.returncode == 2
    assert "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD" in no_login.stderr
    assert len(no_login.stderr.strip().splitlines()) == 1


def test_a_one_shot_partner_client_skips_the_idempotent_producer_s_half_second() -> None:
    # Measured on Apache Kafka 4.4: an idempotent producer's first record took
    # 510 ms (its producer id is asked for on a timer), 15 ms without idempotence.
    from pipeline.client import PartnerClient
    from pipeline.config import Settings

    settings = Settings(bootstrap_servers="127.0.0.1:9", profile="production")
    lasting = PartnerClient(settings, "acme", b"s" * 32)
    once = PartnerClient(settings, "acme", b"s" * 32, one_shot=True)
    assert lasting._producer.config["enable.idempotence"] == "true"
    assert once._producer.config["enable.idempotence"] == "false"
    assert once._producer.config["partitioner"] == "murmur2_random"  # placement still holds


def test_an_external_cluster_is_named_by_the_environment_and_never_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.dev.engines import ExternalBroker, external_env, start_broker
    from pipeline.errors import PipelineError

    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    with pytest.raises(PipelineError, match=r"^PIPELINE_TEST_BROKER=external needs KAFKA_BOOT"):
        ExternalBroker()
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "b-1.example:9096")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "ci")
    broker = start_broker("external", tmp_path)
    assert broker.bootstrap == "b-1.example:9096"
    broker.stop()  # not ours: nothing happens
    assert broker.running()
    assert external_env()["KAFKA_SASL_USERNAME"] == "ci"
    with pytest.raises(PipelineError, match="configures its own broker"):
        start_broker("external", tmp_path, {"log.cleaner.backoff.ms": "200"})
