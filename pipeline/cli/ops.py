"""Operations: dead letters, usage, and any topic decoded."""

from __future__ import annotations

import argparse
import json

from pipeline.cli.common import (
    Parser,
    kafka_parts,
    positive_int,
)


def _add_filters(p: Parser) -> None:
    from pipeline.errors import REASONS

    p.add_argument("--partner", metavar="ID")
    p.add_argument("--reason", choices=REASONS)
    p.add_argument("--since", help="e.g. 15m, 2h, 7d, or an ISO 8601 time")


def add_dlq(sub: argparse._SubParsersAction[Parser]) -> None:
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
    rp.add_argument("--max-replays", type=positive_int, help="default PIPELINE_DLQ_MAX_REPLAYS (3)")
    rp.set_defaults(func=cmd_dlq_replay)


def _since(args: argparse.Namespace) -> int | None:
    from pipeline.ops import parse_since

    return parse_since(args.since) if args.since else None


def cmd_dlq_list(args: argparse.Namespace) -> int:
    parts = kafka_parts()
    from pipeline.ops import dead_letter_row, read_dead_letters, render_table

    rows = [
        dead_letter_row(e)
        for e in read_dead_letters(
            parts.settings,
            parts.codec,
            partner=args.partner,
            reason=args.reason,
            since_ms=_since(args),
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

    parts = kafka_parts()
    settings = parts.settings
    max_replays = args.max_replays if args.max_replays is not None else settings.max_replays
    codec = parts.codec
    entries = read_dead_letters(
        settings, codec, partner=args.partner, reason=args.reason, since_ms=_since(args)
    )
    plan = plan_replay(entries, max_replays, served_requests(settings, codec))
    for entry in plan.served:
        print(f"skipped  {entry.partner_id}/{entry.record['request_id']}: already served")
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
    result = replay(settings, plan, parts.secrets)
    for entry, why in result.skipped:
        print(f"skipped  {entry.partner_id}/{entry.record['request_id']}: {why}")
    for entry, why in result.failed:
        print(f"failed   {entry.partner_id}/{entry.record['request_id']}: {why}")
    print(
        f"replayed {len(result.replayed)}, skipped {len(result.skipped)}, "
        f"failed {len(result.failed)}, refused {len(plan.refused)}, "
        f"{len(plan.served)} already served"
    )
    return 1 if result.failed else 0


def add_inspect(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "inspect",
        help="decode a pipeline topic to JSON lines",
        description="Print every record of a pipeline topic, decoded, one JSON object a line "
        "(byte payloads as their size). For ops and analytics alike.",
    )
    p.add_argument("topic", metavar="TOPIC", help="e.g. claude.dlq, claude.requests.acme")
    p.add_argument("--follow", action="store_true", help="keep printing new records")
    p.add_argument("--partner", metavar="ID", help="only this partner's records")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.kafka import read_topics
    from pipeline.ops import inspect_record, record_partner, schema_of_topic

    schema_of_topic(args.topic)  # not a pipeline topic: one line, exit 2
    parts = kafka_parts()
    for msg in read_topics(parts.settings, [args.topic], follow=args.follow):
        _, timestamp = msg.timestamp()
        record = inspect_record(
            parts.codec,
            msg.topic() or args.topic,
            msg.partition() or 0,
            msg.offset() or 0,
            timestamp if timestamp > 0 else None,
            msg.key(),
            msg.value(),
        )
        if args.partner and record_partner(record) != args.partner:
            continue
        print(json.dumps(record, default=str), flush=True)
    return 0


def add_usage(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("usage", help="usage analytics")
    usub = p.add_subparsers(dest="usage_command", metavar="ACTION", parser_class=Parser)
    usub.required = True
    r = usub.add_parser("report", help="aggregate claude.usage per partner")
    r.add_argument("--since", help="e.g. 24h, 30d, or an ISO 8601 time")
    r.add_argument("--format", choices=["table", "json", "html"], default="table")
    r.set_defaults(func=cmd_usage_report)


def cmd_usage_report(args: argparse.Namespace) -> int:
    parts = kafka_parts()
    from pipeline.ops import render_html, render_table, usage_report

    report = {
        k: v.as_dict() for k, v in usage_report(parts.settings, parts.codec, _since(args)).items()
    }
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
