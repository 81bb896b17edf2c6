"""Which broker a local stack runs on: the embedded Tansu (the dev profile's
workarounds) or Apache Kafka (the production profile, SASL when asked), for the
demo, the benchmarks, the chaos run and the integration tests."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pipeline.devbroker import DevBroker
from pipeline.errors import PipelineError
from pipeline.kafkabroker import SCRAM, Credentials, KafkaBroker

ENGINES = ("tansu", "kafka")
#: What each engine runs the pipeline with: Tansu needs the dev profile's
#: workarounds; Apache Kafka runs the production profile, its real timings.
ENGINE_ENV = {
    "tansu": {"PIPELINE_PROFILE": "dev"},
    "kafka": {"PIPELINE_PROFILE": "production", "PIPELINE_BROKER": "kafka"},
}


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
) -> DevBroker | KafkaBroker:
    """A started broker of `engine`, its log in `workdir`."""
    broker: DevBroker | KafkaBroker
    if engine == "kafka":
        broker = KafkaBroker(workdir=workdir, settings=dict(settings or {}), sasl=sasl)
    elif sasl is not None:
        raise PipelineError("SASL needs the kafka engine (Tansu has none)")
    else:
        broker = DevBroker(log_file=workdir / "broker.log")
    broker.start()
    return broker
