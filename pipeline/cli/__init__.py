"""The `claude-pipeline` command tree.

Every command answers --help; a bad argument exits 2 with one clear line.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Sequence

from pipeline import __version__
from pipeline.cli.admin import add_deploy, add_partners, add_topics, add_users
from pipeline.cli.batches import add_batches
from pipeline.cli.common import Parser, UsageError
from pipeline.cli.ops import add_dlq, add_inspect, add_usage
from pipeline.cli.partner import add_responses, add_send
from pipeline.cli.run import (
    add_bench,
    add_broker,
    add_chaos,
    add_demo,
    add_schema_registry,
    add_sim,
    add_worker,
)
from pipeline.errors import ConfigError, PipelineError, SecretError
from pipeline.factory import RDKAFKA_LOG


def build_parser() -> Parser:
    parser = Parser(
        prog="claude-pipeline",
        description="Fair, rate-limited, signed multi-partner access to Claude over Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    add_demo(sub)
    add_broker(sub)
    add_schema_registry(sub)
    add_sim(sub)
    add_worker(sub)
    add_topics(sub)
    add_partners(sub)
    add_users(sub)
    add_send(sub)
    add_responses(sub)
    add_dlq(sub)
    add_usage(sub)
    add_inspect(sub)
    add_batches(sub)
    add_bench(sub)
    add_chaos(sub)
    add_deploy(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "worker":
        # A command speaks for itself in one line; librdkafka's own retries of an
        # unreachable broker are hundreds of lines. (The worker logs them as JSON.)
        RDKAFKA_LOG.addHandler(logging.NullHandler())
        RDKAFKA_LOG.propagate = False
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
