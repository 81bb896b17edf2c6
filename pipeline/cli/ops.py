"""Operations: dead letters, usage, and any topic decoded."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

from pipeline.cli.common import (
    Parser,
    UsageError,
    kafka_parts,
    positive_int,
    progress,
)
from pipeline.partners import DLQ_TOPIC, USAGE_TOPIC

if TYPE_CHECKING:
    from pipeline.factory import Parts

T = TypeVar("T")


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
    from pipeline.ops.dlq import parse_since

    return parse_since(args.since) if args.since else None


def cmd_dlq_list(args: argparse.Namespace) -> int:
    parts = kafka_parts()
    from pipeline.ops.dlq import dead_letter_row, read_dead_letters, render_table

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
    from pipeline.ops.dlq import plan_replay, read_dead_letters, replay, served_requests

    parts = kafka_parts()
    settings = parts.settings
    max_replays = args.max_replays if args.max_replays is not None else settings.max_replays
    codec = parts.codec
    entries = read_dead_letters(
        settings, codec, partner=args.partner, reason=args.reason, since_ms=_since(args)
    )
    plan = plan_replay(
        _reading(parts, DLQ_TOPIC, entries), max_replays, served_requests(settings, codec)
    )
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
    result = replay(
        settings, plan, parts.secrets, lambda todo: progress(todo, len(todo), "replaying")
    )
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


def _reading(parts: Parts, topic: str, items: Iterable[T]) -> Iterable[T]:
    """`items` read from `topic`, with a progress bar toward its current end."""
    from pipeline.kafka.clients import end_offsets

    return progress(items, sum(tp.offset for tp in end_offsets(parts.settings, topic)), topic)


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
    from pipeline.kafka.clients import read_topics
    from pipeline.ops.dlq import inspect_record, record_partner, schema_of_topic

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
    r = usub.add_parser(
        "report",
        help="aggregate claude.usage per partner",
        description="Usage per partner from claude.usage (and claude.dlq for the HTML "
        "report's dead letters): a table, JSON, one self-contained HTML page with charts, "
        "or one row per request as CSV or Parquet for pandas and DuckDB.",
    )
    r.add_argument("--since", help="e.g. 24h, 30d, or an ISO 8601 time")
    r.add_argument("--until", help="e.g. 1h (ago), or an ISO 8601 time")
    r.add_argument("--partner", metavar="ID", help="only this partner")
    r.add_argument("--format", choices=["table", "json", "html", "csv", "parquet"], default="table")
    r.add_argument("--output", "-o", metavar="FILE", help="write here (parquet needs it)")
    r.set_defaults(func=cmd_usage_report)


def cmd_usage_report(args: argparse.Namespace) -> int:
    from pipeline.ops.dlq import parse_since

    if args.format == "parquet" and not args.output:
        raise UsageError("--format parquet writes a file: give --output FILE")
    since = _since(args)
    until = parse_since(args.until) if args.until else None
    if since is not None and until is not None and until <= since:
        raise UsageError("--until must be later than --since")
    parts = kafka_parts()
    from pipeline.ops import report as rep
    from pipeline.ops.dlq import PartnerUsage, read_dead_letters, render_table, usage_records

    def wanted(ts_ms: int, partner_id: str | None) -> bool:
        return (
            (since is None or ts_ms >= since)
            and (until is None or ts_ms < until)
            and (args.partner is None or partner_id == args.partner)
        )

    records = [
        u
        for u in _reading(parts, USAGE_TOPIC, usage_records(parts.settings, parts.codec))
        if wanted(u["ts_ms"], u["partner_id"])
    ]
    if args.format in ("csv", "parquet"):
        if args.format == "parquet":
            n = rep.write_parquet(records, Path(args.output))
        else:
            with _output(args.output) as out:
                n = rep.write_csv(records, out)
        if args.output:
            print(f"{n} usage records written to {args.output}", file=sys.stderr)
        return 0
    if args.format == "html":
        letters = _reading(parts, DLQ_TOPIC, read_dead_letters(parts.settings, parts.codec))
        reasons = [
            (e.partner_id or "", e.reason)
            for e in letters
            if wanted(int(e.record["failed_at_ms"]), e.partner_id)
        ]
        summary = rep.summarise(records, reasons)
        page = rep.render_report(
            summary, title="Claude usage by partner", period=_period(since, until, args.partner)
        )
        with _output(args.output) as out:
            out.write(page)
        return 0
    by_partner: dict[str, PartnerUsage] = {}
    for u in records:
        by_partner.setdefault(str(u["partner_id"]), PartnerUsage()).add(u)
    report = {k: by_partner[k].as_dict() for k in sorted(by_partner)}
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
    if rows:
        print(render_table(rows, list(rows[0])))
    else:
        print("no usage records")
    return 0


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    with open(path, "w", encoding="utf-8", newline="") as out:
        yield out


def _period(since: int | None, until: int | None, partner: str | None) -> str:
    def day(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")

    text = f"{day(since) if since else 'the beginning'} to {day(until) if until else 'now'}"
    return text + (f", partner {partner}" if partner else "")
