"""Which broker a local stack runs on: the embedded Tansu (the dev profile's
workarounds), Apache Kafka (the production profile, SASL when asked), or a
cluster of the user's own (`external`: `KAFKA_BOOTSTRAP_SERVERS` and the
`KAFKA_*` security settings, never started or stopped here), for the demo,
the benchmarks, the chaos run and the integration tests."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from pipeline.dev.devbroker import DevBroker
from pipeline.dev.kafkabroker import SCRAM, Credentials, KafkaBroker
from pipeline.errors import PipelineError

ENGINES = ("tansu", "kafka", "external")
#: What each engine runs the pipeline with: Tansu needs the dev profile's
#: workarounds; Apache Kafka runs the production profile, its real timings.
ENGINE_ENV = {
    "tansu": {"PIPELINE_PROFILE": "dev"},
    "kafka": {"PIPELINE_PROFILE": "production", "PIPELINE_BROKER": "kafka"},
    "external": {"PIPELINE_PROFILE": "production", "PIPELINE_BROKER": "kafka"},
}
#: What an external cluster's clients log in with, passed through from the environment.
SECURITY_ENV = (
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CA_LOCATION",
)


class ExternalBroker:
    """A cluster this process did not start and must not stop."""

    pid = None

    def __init__(self) -> None:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        if not bootstrap:
            raise PipelineError(
                "PIPELINE_TEST_BROKER=external needs KAFKA_BOOTSTRAP_SERVERS (your cluster)"
            )
        self.bootstrap = bootstrap

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def running(self) -> bool:
        return True


def external_env() -> dict[str, str]:
    """The `KAFKA_*` security settings of an external cluster, from the environment."""
    return {name: os.environ[name] for name in SECURITY_ENV if os.environ.get(name)}


def engine_env(engine: str) -> dict[str, str]:
    """What a stack on `engine` runs with; on a cluster of the user's own, its
    login too, and a consumer group of the stack's own (other stacks share it)."""
    env = dict(ENGINE_ENV[engine])
    if engine == "external":
        env.update(external_env())
        env["PIPELINE_GROUP_ID"] = f"claude-pipeline-{secrets.token_hex(4)}"
    return env


def use_engine(engine: str) -> None:
    """Make `engine` every Stack's default in this process and its children (what
    `bench --broker`, `chaos --broker` and `demo --engine` choose)."""
    os.environ["PIPELINE_TEST_BROKER"] = engine_of(engine)


def engine_of(engine: str | None) -> str:
    """The broker engine asked for, else `PIPELINE_TEST_BROKER`, else tansu."""
    chosen = engine or os.environ.get("PIPELINE_TEST_BROKER") or "tansu"
    if chosen not in ENGINES:
        raise PipelineError(f"PIPELINE_TEST_BROKER must be one of {', '.join(ENGINES)}")
    return chosen


def sasl_env(username: str, password: str) -> dict[str, str]:
    """The environment that logs our tools and workers in as `username`."""
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": SCRAM,
        "KAFKA_SASL_USERNAME": username,
        "KAFKA_SASL_PASSWORD": password,
    }


def start_broker(
    engine: str,
    workdir: Path,
    settings: Mapping[str, str] | None = None,
    sasl: Credentials | None = None,
) -> DevBroker | KafkaBroker | ExternalBroker:
    """A started broker of `engine`, its log in `workdir`."""
    broker: DevBroker | KafkaBroker | ExternalBroker
    if engine == "external":
        if settings or sasl is not None:
            raise PipelineError("this test configures its own broker: not on an external one")
        broker = ExternalBroker()
    elif engine == "kafka":
        broker = KafkaBroker(workdir=workdir, settings=dict(settings or {}), sasl=sasl)
    elif sasl is not None:
        raise PipelineError("SASL needs the kafka engine (Tansu has none)")
    else:
        broker = DevBroker(log_file=workdir / "broker.log")
    broker.start()
    return broker
