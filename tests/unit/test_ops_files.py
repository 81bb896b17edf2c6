"""The dashboard, the alert rules and docker-compose, checked without Docker:
promtool (Debian's prometheus package) for the rules and config, the compose
specification's JSON schema, and our own parser for every command compose runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.ops.metrics import Metrics
from pipeline.ops.opsfiles import (
    ALERTS,
    DEPLOY,
    alert_quantities,
    alert_rules,
    dashboard_queries,
    metric_names,
)

ROOT = DEPLOY.parent
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian: apt-get install prometheus; .ci/run does)",
)


def _defined() -> set[str]:
    return {m.name for m in Metrics().registry.collect()}


def test_every_dashboard_and_alert_query_names_only_metrics_the_worker_defines() -> None:
    defined = _defined()
    queries = dashboard_queries() + alert_quantities()
    assert len(dashboard_queries()) >= 20
    for query in queries:
        used = metric_names(query.expr)
        assert used, query
        assert used <= defined, (query.where, used - defined)


def test_the_dashboard_covers_what_operators_asked_for() -> None:
    used = set().union(*(metric_names(q.expr) for q in dashboard_queries()))
    wanted = {
        "claude_partner_requests", "claude_partner_errors", "claude_partner_dlq",
        "claude_partner_request_duration_seconds", "claude_partner_upstream_duration_seconds",
        "claude_partner_tokens", "claude_partner_cost_usd", "claude_partner_budget_used_ratio",
        "claude_partner_queue_depth", "claude_partner_backlog_records",
        "claude_upstream_ratelimit_remaining", "claude_partner_rate_limited",
        "claude_partner_retries", "claude_worker_ready", "claude_upstream_circuit_open",
    }  # fmt: skip
    assert wanted <= used, wanted - used


def test_every_alert_has_a_summary_and_a_severity() -> None:
    names = {r["alert"] for r in alert_rules()}
    assert {
        "ClaudePipelineDeadLetters", "ClaudePipelineRateLimited", "ClaudePipelineBudgetHigh",
        "ClaudePipelineBacklogGrowing", "ClaudePipelineNoReadyWorker",
        "ClaudePipelineCircuitOpen", "ClaudePipelineLatencyHigh",
    } <= names  # fmt: skip
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def _promtool(*args: str) -> str:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_promtool
def test_promtool_accepts_the_rules_and_the_config() -> None:
    assert "SUCCESS: 7 rules found" in _promtool("check", "rules", str(ALERTS))
    assert "is valid prometheus config" in _promtool(
        "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")
    )


@needs_promtool
def test_each_alert_fires_when_it_should_and_not_otherwise() -> None:
    assert "SUCCESS" in _promtool("test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml"))


@needs_promtool
def test_promtool_accepts_the_metrics_a_worker_exposes() -> None:
    from prometheus_client import generate_latest

    metrics = Metrics()
    metrics.requests.labels("acme", "ok").inc()
    metrics.request_duration.labels("acme").observe(0.2)
    metrics.backlog.labels("acme").set(3)
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=generate_latest(metrics.registry),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_docker_compose_follows_the_compose_specification() -> None:
    import json

    import jsonschema
    import yaml

    schema = json.loads((Path(__file__).parent / "data" / "compose_spec.json").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    # the file names draft 2019-09 with a trailing "#" jsonschema does not know
    jsonschema.Draft201909Validator(schema).validate(compose)
    # what the schema cannot know
    kafka_env = compose["services"]["kafka"]["environment"]
    cluster_id = str(kafka_env["CLUSTER_ID"])
    assert len(cluster_id) == 22, "KRaft wants a base64url-encoded UUID"
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and "secrets" not in source:
                assert (ROOT / source).exists(), f"compose mounts a missing {source}"


def test_every_command_compose_runs_is_one_our_cli_accepts() -> None:
    import yaml

    from pipeline.cli import build_parser

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    parser = build_parser()
    checked = 0
    for name, service in compose["services"].items():
        command = service.get("command")
        if service.get("build") is None or not isinstance(command, list):
            continue  # not our image
        args = parser.parse_args(command)
        assert args.command, name
        checked += 1
    assert checked >= 4


def test_every_docker_compose_run_the_docs_show_names_a_service_and_a_valid_command() -> None:
    import re
    import shlex

    import yaml

    from pipeline.cli import build_parser

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    parser = build_parser()
    shown = 0
    for doc in (
        "README.md",
        *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
        "docker-compose.yml",
    ):
        text = re.sub(r"\\\n\s*#?\s*", " ", (ROOT / doc).read_text())
        for line in re.findall(r"docker compose run --rm (.+)", text):
            words = shlex.split(line.lstrip("# "))
            assert words[0] in services, f"{doc}: no service {words[0]!r}"
            parser.parse_args(words[1:])
            shown += 1
    assert shown >= 4


#: Broker settings from Kafka 3.9's configuration reference that a KRaft broker
#: with SASL_SSL, mTLS to the controller and ACLs uses (a typo is not in here).
KAFKA_BROKER_CONFIGS = {
    "advertised.listeners", "allow.everyone.if.no.acl.found", "authorizer.class.name",
    "auto.create.topics.enable", "controller.listener.names", "controller.quorum.voters",
    "group.initial.rebalance.delay.ms", "inter.broker.listener.name",
    "listener.security.protocol.map", "listeners", "log.dirs", "node.id", "num.partitions",
    "offsets.topic.replication.factor", "process.roles", "sasl.enabled.mechanisms",
    "sasl.mechanism.inter.broker.protocol", "ssl.client.auth", "ssl.enabled.protocols",
    "ssl.endpoint.identification.algorithm", "ssl.keystore.location", "ssl.keystore.type",
    "ssl.truststore.location", "ssl.truststore.type", "super.users",
    "transaction.state.log.min.isr", "transaction.state.log.replication.factor",
    "message.max.bytes", "replica.fetch.max.bytes", "default.replication.factor",
}  # fmt: skip


def test_the_generated_kafka_properties_use_real_keys_and_agree(tmp_path: Path) -> None:
    import re

    from pipeline.ops.deploy import init

    init(tmp_path, ["acme"])
    props = {}
    for line in (tmp_path / "kafka" / "server.properties").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    protocols = dict(p.split(":") for p in props["listener.security.protocol.map"].split(","))
    names = {n.lower() for n in protocols}
    for key in props:
        per_listener = re.fullmatch(r"listener\.name\.([a-z_]+)\.(.+)", key)
        if per_listener is None:
            assert key in KAFKA_BROKER_CONFIGS, f"not a Kafka broker setting: {key}"
            continue
        listener, setting = per_listener.groups()
        assert listener in names, f"{key}: no listener {listener}"
        setting = re.sub(r"^scram-sha-(256|512)\.", "", setting)  # per-mechanism JAAS
        assert setting in KAFKA_BROKER_CONFIGS | {"sasl.jaas.config"}, key
    listeners = {entry.split("://")[0] for entry in props["listeners"].split(",")}
    assert listeners <= set(protocols)
    assert {e.split("://")[0] for e in props["advertised.listeners"].split(",")} <= listeners
    assert props["inter.broker.listener.name"] in listeners
    assert set(props["controller.listener.names"].split(",")) <= listeners
    assert props["sasl.mechanism.inter.broker.protocol"] in props["sasl.enabled.mechanisms"]
