"""Ops tools: inspect and replay dead letters, report usage."""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from pipeline.config import Settings
from pipeline.errors import NEVER_REPLAYED, ConfigError, SchemaError, SecretError
from pipeline.kafka.clients import SyncProducer, read_topics
from pipeline.partners import (
    DLQ_TOPIC,
    PARTNERS_TOPIC,
    REQUESTS_PREFIX,
    RESPONSES_PREFIX,
    STATE_TOPIC,
    USAGE_TOPIC,
    Partner,
    load_partners,
    partner_of_requests_topic,
)
from pipeline.records import DeadLetter, UsageRecord
from pipeline.schemas import Codec
from pipeline.security.sealing import Keyring, load_keyring, open_sealed
from pipeline.security.signing import SecretResolver, replay_headers

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """`90s`, `10m`, `2h`, `1d` as seconds; ConfigError otherwise."""
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise ConfigError(f"expected a duration like 90s, 10m, 2h or 1d, got {text!r}")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def parse_since(text: str, now: float | None = None) -> int:
    """`15m`, `2h`, `7d` ago, or an ISO 8601 time; returns unix epoch milliseconds."""
    now = time.time() if now is None else now
    m = _DURATION.fullmatch(text.strip())
    if m:
        return int((now - float(m.group(1)) * _UNIT_S[m.group(2)]) * 1000)
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--since expects a duration like 15m, 2h, 7d or an ISO time, got {text!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def read_records(
    settings: Settings, codec: Codec, topic: str, name: str
) -> Iterator[dict[str, Any]]:
    """Every decodable `name` record of `topic`, oldest first (undecodable ones skipped)."""
    for msg in read_topics(settings, [topic]):
        value = msg.value()
        if value is None:
            continue
        try:
            yield codec.decode(name, value)
        except SchemaError:
            continue


def usage_records(settings: Settings, codec: Codec) -> Iterator[UsageRecord]:
    for record in read_records(settings, codec, USAGE_TOPIC, "UsageRecord"):
        yield cast(UsageRecord, record)


# -- dead letters ----------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetterEntry:
    record: DeadLetter

    @property
    def partner_id(self) -> str | None:
        value = self.record.get("partner_id")
        return str(value) if value else None

    @property
    def reason(self) -> str:
        return str(self.record["reason"])


def read_dead_letters(
    settings: Settings,
    codec: Codec,
    *,
    partner: str | None = None,
    reason: str | None = None,
    since_ms: int | None = None,
) -> Iterator[DeadLetterEntry]:
    for record in read_records(settings, codec, DLQ_TOPIC, "DeadLetter"):
        entry = DeadLetterEntry(cast(DeadLetter, record))
        if partner is not None and entry.partner_id != partner:
            continue
        if reason is not None and entry.reason != reason:
            continue
        if since_ms is not None and int(record["failed_at_ms"]) < since_ms:
            continue
        yield entry


def dead_letter_row(entry: DeadLetterEntry) -> dict[str, Any]:
    r = entry.record
    return {
        "failed_at": datetime.fromtimestamp(r["failed_at_ms"] / 1000, tz=UTC).isoformat(
            timespec="seconds"
        ),
        "partner": r["partner_id"],
        "request_id": r["request_id"],
        "reason": r["reason"],
        "detail": r["detail"],
        "attempts": r["attempts"],
        "replay_count": r["replay_count"],
        "source": f"{r['source_topic']}[{r['source_partition']}]@{r['source_offset']}",
    }


@dataclass
class ReplayPlan:
    replay: list[DeadLetterEntry] = field(default_factory=list)
    refused: list[tuple[DeadLetterEntry, str]] = field(default_factory=list)
    #: Dead letters whose request was served (by an earlier replay, or at all).
    served: list[DeadLetterEntry] = field(default_factory=list)


def served_requests(settings: Settings, codec: Codec) -> set[tuple[str, str]]:
    """Every request served ok, from the usage topic."""
    return {
        (str(u["partner_id"]), str(u["request_id"]))
        for u in usage_records(settings, codec)
        if u["status"] == "ok"
    }


def plan_replay(
    entries: Iterable[DeadLetterEntry],
    max_replays: int,
    served: Collection[tuple[str, str]] = (),
) -> ReplayPlan:
    """Pick what to replay: the latest dead letter per request, within the replay limit,
    never one of a request that was served (whenever that was: a replay must not
    become a second execution), never one whose reason rules it out."""
    latest: dict[tuple[str | None, str], DeadLetterEntry] = {}
    plan = ReplayPlan()
    for entry in entries:
        request_id = entry.record.get("request_id")
        if request_id is None:
            # No request_id: one entry per source position.
            key: tuple[str | None, str] = (
                entry.partner_id,
                f"{entry.record['source_topic']}:{entry.record['source_partition']}:"
                f"{entry.record['source_offset']}",
            )
        else:
            key = (entry.partner_id, str(request_id))
        previous = latest.get(key)
        if previous is None or entry.record["failed_at_ms"] >= previous.record["failed_at_ms"]:
            latest[key] = entry
    for entry in latest.values():
        rid = entry.record.get("request_id")
        if entry.reason in NEVER_REPLAYED:
            plan.refused.append((entry, f"{entry.reason} is never replayed"))
        elif rid and (entry.partner_id or "", str(rid)) in served:
            plan.served.append(entry)
        elif partner_of_requests_topic(str(entry.record["source_topic"])) is None:
            plan.refused.append((entry, "its source is not a partner request topic"))
        elif int(entry.record["replay_count"]) >= max_replays:
            plan.refused.append(
                (
                    entry,
                    f"already replayed {entry.record['replay_count']} times (max {max_replays})",
                )
            )
        else:
            plan.replay.append(entry)
    return plan


@dataclass
class ReplayResult:
    replayed: list[DeadLetterEntry] = field(default_factory=list)
    #: Not replayed by rule, found when opening it (say, never verified).
    skipped: list[tuple[DeadLetterEntry, str]] = field(default_factory=list)
    #: Could not be replayed (a missing secret, a payload that does not open).
    failed: list[tuple[DeadLetterEntry, str]] = field(default_factory=list)


def replay(
    settings: Settings,
    plan: ReplayPlan,
    resolver: SecretResolver,
    each: Callable[[list[DeadLetterEntry]], Iterable[DeadLetterEntry]] = iter,
) -> ReplayResult:
    """Re-produce each original value (unsealed) with its headers, signed afresh
    with the partner's secret and carrying its signed replay count. One entry's
    problem is that entry's: the rest are replayed, and the result says what
    happened to each."""
    partners = load_partners(settings.partners_file)
    keyring = load_keyring(settings.dlq_keys_ref, resolver.resolve)
    producer = SyncProducer(settings)
    now = time.time()
    result = ReplayResult()
    for entry in each(plan.replay):  # `each`: e.g. a progress bar around them
        try:
            produced = _replay_one(entry, partners.get, keyring, resolver, producer, now)
        except (ConfigError, SecretError) as exc:
            result.failed.append((entry, str(exc)))
            continue
        if produced is None:
            result.replayed.append(entry)
        else:
            result.skipped.append((entry, produced))
    producer.flush()
    return result


def _replay_one(
    entry: DeadLetterEntry,
    partner_of: Callable[[str], Partner | None],
    keyring: Keyring | None,
    resolver: SecretResolver,
    producer: SyncProducer,
    now: float,
) -> str | None:
    """Produce one entry's replay; returns why it was skipped, or None if produced."""
    r = entry.record
    topic = str(r["source_topic"])
    pid = partner_of_requests_topic(topic) or ""
    partner = partner_of(pid)
    if partner is None:
        raise ConfigError(f"partner {pid!r} is not in the partners file")
    secrets = [resolver.resolve(partner.signing_secret_ref)]
    if partner.previous_signing_secret_ref:
        with contextlib.suppress(SecretError):
            secrets.append(resolver.resolve(partner.previous_signing_secret_ref))
    if not r["payload"]:
        return f"no payload kept ({r.get('payload_bytes') or 0} bytes withheld)"
    aad = f"{topic}|{r['source_partition']}|{r['source_offset']}".encode()
    opened = open_sealed(bytes(r["payload"]), aad, keyring=keyring, partner_secrets=secrets)
    if not opened.verified:
        return "its signature was never verified: it is not replayed as the partner"
    original = [(k, bytes(v)) for k, v in (r.get("headers") or {}).items()]
    headers = replay_headers(
        original, pid, secrets[0], opened.payload, int(r["replay_count"]) + 1, now
    )
    key = r.get("source_key")
    if key is None and r.get("request_id"):
        key = str(r["request_id"]).encode()
    producer.produce(topic, opened.payload, key=key, headers=headers)
    return None


# -- usage ---------------------------------------------------------------------------


@dataclass
class PartnerUsage:
    requests: int = 0
    ok: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cost_usd: float = 0.0
    upstream_ms: list[int] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)

    def add(self, u: UsageRecord) -> None:
        self.requests += 1
        if u["status"] == "ok":
            self.ok += 1
        else:
            self.errors += 1
            if u.get("reason"):
                self.reasons[str(u["reason"])] += 1
        self.input_tokens += u["input_tokens"]
        self.output_tokens += u["output_tokens"]
        self.cache_read_input_tokens += u["cache_read_input_tokens"]
        self.cache_creation_input_tokens += u["cache_creation_input_tokens"]
        self.cost_usd += u["cost_usd"]
        if u["attempts"]:
            self.upstream_ms.append(int(u["upstream_ms"]))
        if u["model"]:
            self.models[str(u["model"])] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "upstream_ms_p50": percentile(self.upstream_ms, 50),
            "upstream_ms_p95": percentile(self.upstream_ms, 95),
            "reasons": dict(self.reasons),
            "models": dict(self.models),
        }


def percentile(values: list[int] | list[float], pct: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1])


def usage_report(
    settings: Settings, codec: Codec, since_ms: int | None = None
) -> dict[str, PartnerUsage]:
    report: dict[str, PartnerUsage] = defaultdict(PartnerUsage)
    for u in usage_records(settings, codec):
        if since_ms is not None and u["ts_ms"] < since_ms:
            continue
        report[str(u["partner_id"])].add(u)
    return dict(sorted(report.items()))


def render_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain aligned text table."""
    cells = [[str("" if r.get(c) is None else r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells)
    return "\n".join(lines)


# -- inspect ---------------------------------------------------------------------------


def schema_of_topic(topic: str) -> str | None:
    """The schema of a pipeline topic's values (None: JSON, the state log)."""
    if topic.startswith(REQUESTS_PREFIX):
        return "ClaudeRequest"
    if topic.startswith(RESPONSES_PREFIX):
        return "ClaudeResponse"
    named = {USAGE_TOPIC: "UsageRecord", DLQ_TOPIC: "DeadLetter", PARTNERS_TOPIC: "PartnerConfig"}
    if topic in named:
        return named[topic]
    if topic == STATE_TOPIC:
        return None
    raise ConfigError(f"{topic} is not a pipeline topic (claude.requests.<id>, "
                      "claude.responses.<id>, claude.usage, claude.dlq, claude.partners, "
                      f"{STATE_TOPIC})")  # fmt: skip


def _json_safe(value: Any) -> Any:
    """Bytes (a dead letter's sealed payload) as their size: never dumped raw."""
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def inspect_record(
    codec: Codec,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    key: bytes | None,
    value: bytes | None,
) -> dict[str, Any]:
    """One record as a JSON-able dict; a value that does not decode says why."""
    out: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp_ms": timestamp_ms,
        "key": key.decode("utf-8", "replace") if key is not None else None,
    }
    name = schema_of_topic(topic)
    if value is None:
        out["value"] = None  # a tombstone
    elif name is None:
        try:
            out["value"] = json.loads(value)
        except ValueError:
            out["error"] = f"not JSON ({len(value)} bytes)"
    else:
        try:
            out["value"] = _json_safe(codec.decode(name, value))
        except SchemaError as exc:
            out["error"] = str(exc)
    return out


def record_partner(record: dict[str, Any]) -> str | None:
    topic = record["topic"]
    pid = partner_of_requests_topic(topic) or (
        topic[len(RESPONSES_PREFIX) :] if topic.startswith(RESPONSES_PREFIX) else None
    )
    value = record.get("value")
    if pid is None and isinstance(value, dict):
        pid = value.get("partner_id")
    if pid is None and topic == STATE_TOPIC and record["key"]:
        pid = record["key"].split("/", 1)[1].split("|")[0] if "/" in record["key"] else None
    return pid
