"""What a partner does from the command line: send requests, read responses."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.cli.common import (
    Parser,
    UsageError,
    kafka_parts,
    non_negative_float,
    positive_int,
)


def add_send(sub: argparse._SubParsersAction[Parser]) -> None:
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
    p.add_argument("--max-tokens", type=positive_int, default=256, help="with --prompt")
    p.add_argument("--system", help="system prompt (with --prompt)")
    p.add_argument("--request-id", help="default: a new UUID")
    p.add_argument("--priority", choices=["interactive", "batch"], default="interactive")
    p.add_argument("--deadline-s", type=non_negative_float, help="give up after this many seconds")
    p.add_argument("--wait", action="store_true", help="wait for the response and print it")
    p.add_argument("--timeout", type=non_negative_float, default=120.0, help="--wait timeout")
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

    parts = kafka_parts()
    settings = parts.settings
    partner = load_partners(settings.partners_file).get(args.partner)
    if partner is None:
        raise UsageError(f"no partner {args.partner!r} in {settings.partners_file}")
    secret = parts.secrets.resolve(partner.signing_secret_ref)
    codec = parts.codec
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
    client = PartnerClient(settings, args.partner, secret, codec, one_shot=True)
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


def add_responses(sub: argparse._SubParsersAction[Parser]) -> None:
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

    check_partner_id(args.partner)
    parts = kafka_parts()
    for response in read_responses(
        parts.settings,
        args.partner,
        parts.codec,
        follow=not args.no_follow,
        from_end=not args.from_beginning,
    ):
        print(json.dumps(response, default=str), flush=True)
    return 0
