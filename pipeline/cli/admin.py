"""Administration: topics and the partner registry."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipeline.cli.common import (
    Parser,
    UsageError,
    csv_list,
    kafka_parts,
    load_settings,
    non_negative_float,
    positive_int,
    ttl_seconds,
)


def add_topics(sub: argparse._SubParsersAction[Parser]) -> None:
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
    c.add_argument("--partitions", type=positive_int, help="partitions per topic (default 4)")
    c.add_argument(
        "--acls",
        action="store_true",
        help="also print the Kafka ACL bindings: each partner writes only its request topic",
    )
    c.add_argument("--apply", action="store_true", help="with --acls: create them on the cluster")
    c.add_argument(
        "--partner-principal",
        default="User:partner-{partner}",
        help="principal of each partner (default User:partner-{partner}: a prefix no "
        "service principal has)",
    )
    c.add_argument(
        "--worker-principal",
        default="User:claude-pipeline",
        help="principal of the workers (default User:claude-pipeline)",
    )
    c.set_defaults(func=cmd_topics_create)
    g = tsub.add_parser(
        "grow",
        help="add partitions to a partner's request topic (running workers follow)",
        description=(
            "CreatePartitions on claude.requests.<ID>: running workers see the new count "
            "within 30 s and rebalance onto it without a restart; records a producer "
            "places by the older count meanwhile are still served. Kafka cannot remove "
            "partitions: grow only."
        ),
    )
    g.add_argument("--partner", required=True, metavar="ID")
    g.add_argument("--partitions", type=positive_int, required=True, help="the new total")
    g.set_defaults(func=cmd_topics_grow)


def cmd_topics_create(args: argparse.Namespace) -> int:
    from pipeline.kafka.admin import provision
    from pipeline.partners import load_partners

    settings = kafka_parts().settings
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
        from pipeline.kafka.acls import all_bindings, apply

        bindings = all_bindings(
            partners, args.partner_principal, args.worker_principal, settings.group_id
        )
        for binding in bindings:
            print(binding)
        if args.apply:
            print(f"applied {apply(settings, bindings)} ACL bindings")
    return 0


def cmd_topics_grow(args: argparse.Namespace) -> int:
    from pipeline.kafka.clients import grow_topic
    from pipeline.partners import check_partner_id, requests_topic

    check_partner_id(args.partner)
    topic = requests_topic(args.partner)
    before = grow_topic(kafka_parts().settings, topic, args.partitions)
    print(f"{topic}: {before} -> {args.partitions} partitions")
    return 0


def add_partners(sub: argparse._SubParsersAction[Parser]) -> None:
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
    _partner_flags(add, adding=True)
    add.set_defaults(func=cmd_partners_add)

    change = psub.add_parser(
        "set",
        help="change a registered partner (flags as for add; only those given change)",
        description="Change a registered partner: the flags given, nothing else.",
    )
    _partner_flags(change, adding=False)
    change.set_defaults(func=cmd_partners_set)

    for action, helptext in (
        ("disable", "refuse the partner's requests (reaches running workers within seconds)"),
        ("enable", "serve the partner's requests again"),
        ("remove", "delete the partner (a signed removal record on claude.partners)"),
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

    key = psub.add_parser(
        "rotate-key",
        help="switch a partner to a new upstream (Anthropic) API key, without a restart",
        description=(
            "Make REF the partner's Anthropic API key. New requests use it at once; a request "
            "that already made an attempt with the old key finishes on it (its retries "
            "included) during the grace window; after it, nothing uses the old key. Each key "
            "keeps its own rate-limit view. REF must be readable by the workers: a file:PATH "
            "(re-read when it changes) or an env:NAME already set in their environment."
        ),
    )
    key.add_argument("partner_id", metavar="ID")
    key.add_argument("--new-ref", required=True, help="env:NAME or file:PATH")
    key.add_argument("--grace", default="10m", help="how long the old key may finish calls (10m)")
    key.set_defaults(func=cmd_partners_rotate_key)

    sync = psub.add_parser("sync", help="publish every partner of the file to claude.partners")
    sync.set_defaults(func=cmd_partners_sync)


#: Flags of `partners add` and `partners set`, by Partner field.
_FIELDS = (
    "weight", "rpm", "tpm", "daily_token_budget", "monthly_budget_usd", "allowed_models",
    "max_tokens_cap", "signing_secret_ref", "api_key_ref", "betas", "workspace_id",
    "auto_cache", "response_cache_ttl_s",
)  # fmt: skip


def _partner_flags(p: argparse.ArgumentParser, *, adding: bool) -> None:
    p.add_argument("partner_id", metavar="ID")
    p.add_argument("--weight", type=positive_int, help="fair-share weight (1)")
    p.add_argument("--rpm", type=positive_int, help="requests per minute limit")
    p.add_argument("--tpm", type=positive_int, help="tokens per minute limit")
    p.add_argument("--daily-token-budget", type=positive_int, help="tokens per UTC day")
    p.add_argument("--monthly-budget-usd", type=non_negative_float, help="USD per month")
    p.add_argument(
        "--models",
        dest="allowed_models",
        type=csv_list,
        help="allowed models, a,b (default all)",
    )
    p.add_argument("--max-tokens-cap", type=positive_int, help="largest max_tokens allowed")
    p.add_argument(
        "--signing-secret-ref",
        required=adding,
        help="env:NAME or file:PATH, within PIPELINE_PARTNER_SECRETS",
    )
    p.add_argument("--api-key-ref", help="the partner's own Anthropic key: env:NAME or file:PATH")
    p.add_argument(
        "--betas",
        type=csv_list,
        help="betas its requests may name (anthropic-beta), a,b; '' for none (default none)",
    )
    p.add_argument(
        "--workspace-id",
        help="the Workspace its requests run in (anthropic-workspace-id); '' for the key's own",
    )
    p.add_argument(
        "--response-cache-ttl",
        dest="response_cache_ttl_s",
        type=ttl_seconds,
        metavar="DURATION",
        help="serve an exact repeat of a temperature-0 request from the cache for this "
        "long (10m, 1h); 0 for never (default never)",
    )
    p.add_argument(
        "--auto-cache",
        choices=("on", "off"),
        help="a prompt-cache breakpoint on the long system/tools prefix of requests that "
        "placed none (off)",
    )


def _given(args: argparse.Namespace) -> dict[str, Any]:
    given = {f: getattr(args, f) for f in _FIELDS if getattr(args, f) is not None}
    if given.get("workspace_id") == "":
        given["workspace_id"] = None  # back to the API key's own Workspace
    if given.get("response_cache_ttl_s") == 0:
        given["response_cache_ttl_s"] = None  # off
    if "auto_cache" in given:
        given["auto_cache"] = given["auto_cache"] == "on"
    return given


def cmd_partners_set(args: argparse.Namespace) -> int:
    from pipeline.kafka.admin import update_partner

    changes = _given(args)
    if not changes:
        raise UsageError("nothing to change: give at least one flag")
    parts = kafka_parts()
    update_partner(parts.settings, parts.codec, args.partner_id, **changes)
    print(f"partner {args.partner_id}: set {', '.join(sorted(changes))}")
    return 0


def cmd_partners_list(args: argparse.Namespace) -> int:
    from pipeline.kafka.admin import partners_on_topic
    from pipeline.ops.dlq import render_table
    from pipeline.partners import load_partners

    settings = load_settings()
    if args.source == "file":
        partners = load_partners(settings.partners_file)
    else:
        partners = partners_on_topic(settings, kafka_parts().codec)
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
            "betas": ",".join(r["betas"]) or "-",
            "workspace": r["workspace_id"] or "-",
        }
        for r in records
    ]
    print(render_table(rows, list(rows[0])))
    return 0


def cmd_partners_add(args: argparse.Namespace) -> int:
    from pipeline.kafka.admin import add_partner
    from pipeline.partners import Partner

    settings = load_settings()
    partner = Partner(partner_id=args.partner_id, **_given(args))
    created = add_partner(settings, kafka_parts().codec, partner)
    print(
        f"added partner {partner.partner_id}"
        + (f"; created {', '.join(created)}" if created else "")
    )
    return 0


def cmd_partners_toggle(args: argparse.Namespace) -> int:
    from pipeline.kafka.admin import remove_partner, update_partner

    parts = kafka_parts()
    settings = parts.settings
    if args.action == "remove":
        remove_partner(settings, parts.codec, args.partner_id)
    else:
        update_partner(settings, parts.codec, args.partner_id, enabled=args.action == "enable")
    print(f"partner {args.partner_id}: {args.action}d")
    return 0


def cmd_partners_rotate(args: argparse.Namespace) -> int:
    import time

    from pipeline.kafka.admin import update_partner
    from pipeline.ops.dlq import parse_duration
    from pipeline.partners import load_partners
    from pipeline.security.signing import validate_ref

    settings = load_settings()
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
        kafka_parts().codec,
        args.partner_id,
        signing_secret_ref=args.new_ref,
        previous_signing_secret_ref=current.signing_secret_ref,
        previous_secret_expires_at_ms=expires,
    )
    print(
        f"partner {args.partner_id}: new signing secret; the old one is accepted for {args.grace}"
    )
    return 0


def cmd_partners_rotate_key(args: argparse.Namespace) -> int:
    import time

    from pipeline.kafka.admin import update_partner
    from pipeline.ops.dlq import parse_duration
    from pipeline.partners import load_partners
    from pipeline.security.signing import validate_ref

    settings = load_settings()
    grace_s = parse_duration(args.grace)
    validate_ref(args.new_ref)
    current = load_partners(settings.partners_file).get(args.partner_id)
    if current is None:
        raise UsageError(f"no partner {args.partner_id!r} in {settings.partners_file}")
    if current.api_key_ref == args.new_ref:
        raise UsageError("the new reference is the current one")
    update_partner(
        settings,
        kafka_parts().codec,
        args.partner_id,
        api_key_ref=args.new_ref,
        previous_api_key_ref=current.api_key_ref or "",  # "": the default key
        previous_api_key_expires_at_ms=int((time.time() + grace_s) * 1000),
    )
    print(
        f"partner {args.partner_id}: new upstream API key; calls already started on the old "
        f"one may finish on it for {args.grace}"
    )
    return 0


def cmd_partners_sync(args: argparse.Namespace) -> int:
    from pipeline.kafka.admin import sync_partners

    parts = kafka_parts()
    partners = sync_partners(parts.settings, parts.codec)
    print(f"published {len(partners)} partners to claude.partners")
    return 0


def add_deploy(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("deploy", help="what docker-compose needs to run")
    dsub = p.add_subparsers(dest="deploy_command", metavar="ACTION", parser_class=Parser)
    dsub.required = True
    init = dsub.add_parser(
        "init",
        help="generate credentials, a CA and certificates into deploy/secrets",
        description=(
            "Write random Kafka passwords (admin, workers, one per partner), a CA and the "
            "broker's certificate, the registry key, the dead-letter keyring, partners' "
            "signing secrets and a Grafana admin password. Existing secrets are kept, so "
            "it can be re-run to add partners."
        ),
    )
    init.add_argument("--dir", default="deploy/secrets", help="where (deploy/secrets)")
    init.add_argument("--partners", type=csv_list, default=(), help="partner ids, a,b")
    init.add_argument("--force", action="store_true", help="replace every secret")
    init.add_argument(
        "--env-file",
        default=".env",
        help="compose's .env, where PIPELINE_UID/GID are set (default .env)",
    )
    init.set_defaults(func=cmd_deploy_init)


def cmd_deploy_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.ops.deploy import compose_env, init

    written = init(Path(args.dir), args.partners, force=args.force)
    compose_env(Path(args.env_file))
    print(
        f"{written.directory}: {len(written.created)} files written; partners: "
        f"{', '.join(written.partners) or 'none yet (--partners a,b adds them)'}; "
        f"{args.env_file}: the containers run as this user (PIPELINE_UID)"
    )
    return 0


def add_users(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "users",
        help="Kafka SCRAM logins: one per partner and per worker (set, remove, list)",
        description=(
            "Create, rotate, remove and list SCRAM-SHA-512 credentials on the cluster "
            "(AlterUserScramCredentials), as the admin the KAFKA_SASL_* variables name. "
            "A partner's login is partner-<id> (what topics create --acls grants); the "
            "workers' is claude-pipeline."
        ),
    )
    usub = p.add_subparsers(dest="users_command", metavar="ACTION", parser_class=Parser)
    usub.required = True
    s = usub.add_parser("set", help="create a login, or rotate its password")
    s.add_argument("name", metavar="NAME")
    s.add_argument(
        "--password-ref",
        required=True,
        help="env:NAME or file:PATH holding the password (never given on the command line)",
    )
    s.set_defaults(func=cmd_users_set)
    r = usub.add_parser("remove", help="remove a login's credential")
    r.add_argument("name", metavar="NAME")
    r.set_defaults(func=cmd_users_remove)
    ls = usub.add_parser("list", help="the logins the cluster knows (names and mechanisms)")
    ls.set_defaults(func=cmd_users_list)


def cmd_users_set(args: argparse.Namespace) -> int:
    import os

    from pipeline.kafka.acls import set_scram_user
    from pipeline.security.signing import SecretResolver

    password = SecretResolver(os.environ).resolve(args.password_ref).strip()
    set_scram_user(kafka_parts().settings, args.name, password)
    print(f"SCRAM-SHA-512 login {args.name}: set")
    return 0


def cmd_users_remove(args: argparse.Namespace) -> int:
    from pipeline.kafka.acls import remove_scram_user

    remove_scram_user(kafka_parts().settings, args.name)
    print(f"SCRAM-SHA-512 login {args.name}: removed")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    from pipeline.kafka.acls import scram_users

    for name, mechanisms in scram_users(kafka_parts().settings).items():
        print(f"{name}\t{','.join(mechanisms)}")
    return 0
