"""The `claude-pipeline` command tree.

Every command answers --help; a bad argument exits 2 with one clear line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from pipeline import __version__


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


def _fail_rate(text: str) -> tuple[str, float]:
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
        metavar="KIND=P",
        help="inject faults: KIND is 429, 500, 529, timeout or reset (repeatable)",
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
        "--cache-ttl-s", type=_non_negative_float, default=300.0, help="prompt cache TTL"
    )
    p.add_argument(
        "--cache-min-tokens",
        type=_positive_int,
        default=1024,
        help="shortest cacheable prefix in tokens (default 1024)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_sim)


def cmd_sim(args: argparse.Namespace) -> int:
    from pipeline.logs import setup_logging
    from pipeline.sim import SimConfig, SimServer

    try:
        config = SimConfig(
            rpm=args.rpm,
            itpm=args.itpm,
            otpm=args.otpm,
            burst=args.burst or None,
            latency_ms=args.latency_ms,
            jitter_ms=args.jitter_ms,
            ms_per_output_token=args.ms_per_output_token,
            fail_rates=dict(args.fail_rate),
            seed=args.seed,
            keys=frozenset(k.strip() for k in args.keys.split(",") if k.strip()),
            output_tokens=args.output_tokens,
            timeout_hold_s=args.timeout_hold_s,
            batch_delay_s=args.batch_delay_s,
            cache_ttl_s=args.cache_ttl_s,
            cache_min_tokens=args.cache_min_tokens,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    setup_logging(args.log_level)

    async def serve() -> None:
        async with SimServer(config, args.host, args.port):
            await _until_signalled()

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


# -- the tree --------------------------------------------------------------


def build_parser() -> Parser:
    parser = Parser(
        prog="claude-pipeline",
        description="Fair, rate-limited, signed multi-partner access to Claude over Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    _add_sim(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"claude-pipeline {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
