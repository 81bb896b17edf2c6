"""`claude-pipeline batches list`: the batch lane's open batches, from the state log."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from pipeline.cli.common import Parser, kafka_parts

if TYPE_CHECKING:
    from pipeline.factory import Parts

COLUMNS = ("batch", "key", "topic", "partition", "requests", "age_s", "status", "counts")


def add_batches(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("batches", help="the batch lane's Message Batches")
    bsub = p.add_subparsers(dest="batches_command", metavar="ACTION", parser_class=Parser)
    ls = bsub.add_parser(
        "list",
        help="open batches: key, requests, age, status, counts",
        description="Every batch the workers submitted and have not answered, and the "
        "requests waiting for one, read from the state log; each submitted batch's "
        "request counts asked of the Batches API (with the key it was made with).",
    )
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ls.add_argument(
        "--no-upstream", action="store_true", help="do not ask the Batches API for counts"
    )
    ls.set_defaults(func=cmd_batches_list)


def read_lane(parts: Parts) -> dict[str, Any]:
    """The state log's `batches` table as it stands (last write per key wins)."""
    from pipeline.kafka.clients import read_topics
    from pipeline.partners import STATE_TOPIC

    table: dict[str, Any] = {}
    for msg in read_topics(parts.settings, [STATE_TOPIC]):
        key = (msg.key() or b"").decode("utf-8", "replace")
        if not key.startswith("batches/"):
            continue
        value = msg.value()
        if value is None:
            table.pop(key[len("batches/") :], None)
        else:
            table[key[len("batches/") :]] = json.loads(value)
    return table


async def _counts(parts: Parts, rows: list[dict[str, Any]]) -> None:
    """Each submitted batch's `request_counts` (or why they cannot be read)."""
    from pipeline.errors import SecretError, UpstreamError
    from pipeline.upstream.batches import BatchApi
    from pipeline.upstream.claude import ClaudeClient
    from pipeline.upstream.keys import ApiKeys

    settings = parts.settings
    client = ClaudeClient(settings.anthropic_base_url, 30.0)
    api, keys = BatchApi(client), ApiKeys(parts.secrets, settings.anthropic_api_key)
    try:
        for row in rows:
            if not row["upstream_batch"]:
                continue
            try:
                api_key = keys.for_ref(None if row["key"] == "default" else row["key"])
                batch = await api.retrieve(api_key, row["upstream_batch"])
                row["counts"] = batch.get("request_counts")
                row["status"] = f"{row['status']}/{batch.get('processing_status')}"
            except (SecretError, UpstreamError) as exc:
                row["counts"] = f"unknown: {exc}"
    finally:
        await client.close()


def cmd_batches_list(args: argparse.Namespace) -> int:
    from pipeline.lifecycle.batching import open_rows

    parts = kafka_parts()
    rows = open_rows(read_lane(parts), int(time.time() * 1000))
    if not args.no_upstream and rows:
        asyncio.run(_counts(parts, rows))
    if args.format == "json":
        for row in rows:
            print(json.dumps(row))
        return 0
    if not rows:
        print("no open batches")
        return 0
    table = [[_cell(row.get(c)) for c in COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(COLUMNS)]
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items() if v)
    return str(value)
