"""The records an outcome publishes: a response, a usage record, a dead letter.

Every request ends in exactly one outcome. A success is a response and a usage
record; a failure adds a dead letter with the original record, so ops can
inspect and replay it. A record so broken that no request_id can be read gets
only the dead letter.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from pipeline import messages
from pipeline.errors import NEVER_REPLAYED, InvalidRequest, Reason, RequestError
from pipeline.limits.pricing import PriceTable
from pipeline.partners import DLQ_TOPIC, RESPONSES_PREFIX, USAGE_TOPIC, responses_topic
from pipeline.records import (
    HEAVY_BYTES,
    ClaudeResponse,
    DeadLetter,
    Job,
    OutMessage,
    SourceRecord,
    Status,
    TokenUsage,
    UsageRecord,
)
from pipeline.schemas import Codec
from pipeline.security.signing import SIGNATURE_HEADERS
from pipeline.upstream.claude import UpstreamResult

_NO_TOKENS = {
    "input_tokens": 0,
    "output_tokens": 0,
    "cache_read_input_tokens": 0,
    "cache_creation_input_tokens": 0,
}


def _no_usage() -> TokenUsage:
    return cast(
        TokenUsage,
        {**_NO_TOKENS, "cache_creation": None, "server_tool_use": None, "service_tier": None},
    )


def usage_tokens(usage: TokenUsage) -> dict[str, Any]:
    """A UsageRecord's token fields from a response's TokenUsage."""
    split = usage["cache_creation"] or {}
    server = usage["server_tool_use"] or {}
    one_hour = int(split.get("ephemeral_1h_input_tokens", 0))
    return {
        "input_tokens": usage["input_tokens"],
        "output_tokens": usage["output_tokens"],
        "cache_read_input_tokens": usage["cache_read_input_tokens"],
        "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
        # without a split, every write is billed as a 5-minute one
        "cache_creation_5m_input_tokens": usage["cache_creation_input_tokens"] - one_hour,
        "cache_creation_1h_input_tokens": one_hour,
        "web_search_requests": int(server.get("web_search_requests", 0)),
        "web_fetch_requests": int(server.get("web_fetch_requests", 0)),
        "service_tier": usage["service_tier"],
    }


#: A UsageRecord's fields of what Claude's usage says beyond the token counts.
_NO_DETAILS = {
    "thinking_tokens": None,
    "speed": None,
    "inference_geo": None,
    "server_tool_use_json": None,
}


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def usage_details(usage: object) -> dict[str, Any]:
    """The thinking tokens, speed, region and server-tool counters of Claude's raw
    `usage` object, for analytics (each None when Claude did not say)."""
    if not isinstance(usage, Mapping):
        return dict(_NO_DETAILS)
    details = usage.get("output_tokens_details")
    thinking = details.get("thinking_tokens") if isinstance(details, Mapping) else None
    server = usage.get("server_tool_use")
    texts = {k: usage.get(k) for k in ("speed", "inference_geo")}
    return {
        "thinking_tokens": thinking if _is_count(thinking) else None,
        **{k: v if isinstance(v, str) else None for k, v in texts.items()},
        "server_tool_use_json": (
            messages.dump_json(server, "usage.server_tool_use")
            if isinstance(server, Mapping) and server
            else None
        ),
    }


@dataclass(frozen=True)
class Outcome:
    """What happened to one record, before encoding."""

    record: SourceRecord
    partner_id: str | None
    request_id: str | None
    status: Status
    response: ClaudeResponse | None
    usage: UsageRecord | None
    dead_letter: DeadLetter | None

    @property
    def reason(self) -> Reason | None:
        return None if self.dead_letter is None else Reason(self.dead_letter["reason"])

    def messages(self, codec: Codec) -> list[OutMessage]:
        out: list[OutMessage] = []
        if self.response is not None and self.partner_id is not None:
            topic = responses_topic(self.partner_id)
            value = codec.encode("ClaudeResponse", self.response, topic)
            out.append(OutMessage(topic, (self.request_id or "").encode(), value))
        if self.usage is not None:
            value = codec.encode("UsageRecord", self.usage, USAGE_TOPIC)
            out.append(OutMessage(USAGE_TOPIC, (self.partner_id or "").encode(), value))
        if self.dead_letter is not None:
            value = codec.encode("DeadLetter", self.dead_letter, DLQ_TOPIC)
            out.append(OutMessage(DLQ_TOPIC, (self.partner_id or "").encode() or None, value))
        return out


#: Seals a dead letter's payload: (partner_id, payload, aad, verified) -> stored bytes.
Sealer = Callable[[str | None, bytes, bytes, bool], bytes]


def source_aad(record: SourceRecord) -> bytes:
    """What a sealed payload is bound to: the record it came from."""
    return f"{record.topic}|{record.partition}|{record.offset}".encode()


#: Bounds of the numbers an outcome computes from what a record says.
MAX_LATENCY_MS = 10 * 366 * 24 * 3600 * 1000
MAX_AVRO_INT = 2**31 - 1


def result_cost(prices: PriceTable, result: UpstreamResult) -> float:
    """What one answer of Claude's cost: every kind of token, at the batch price if
    it was answered in a Message Batch."""
    return prices.cost(
        result.model,
        result.input_tokens,
        result.output_tokens,
        result.cache_read_input_tokens,
        result.cache_creation_input_tokens,
        cache_creation_1h_input_tokens=result.cache_creation_1h_input_tokens,
        web_search_requests=result.web_search_requests,
        batch=result.batch,
    )


def result_tokens(result: UpstreamResult) -> int:
    """Every token an answer counts against a daily token budget."""
    return (
        result.input_tokens
        + result.output_tokens
        + result.cache_read_input_tokens
        + result.cache_creation_input_tokens
    )


class OutcomeBuilder:
    def __init__(
        self, prices: PriceTable, wall_ms: Callable[[], int], seal: Sealer | None = None
    ) -> None:
        self._prices = prices
        self._wall_ms = wall_ms
        self._seal = seal

    def _sealed(self, partner_id: str | None, record: SourceRecord, verified: bool) -> bytes:
        payload = record.value or b""
        if self._seal is None or not payload:
            return payload
        return self._seal(partner_id, payload, source_aad(record), verified)

    @staticmethod
    def _latency_ms(created_at_ms: int | None, now_ms: int) -> int:
        # Intake bounds created_at_ms; this bound is for a record that never
        # met intake's (an outcome's fields must always encode).
        return min(max(0, now_ms - created_at_ms), MAX_LATENCY_MS) if created_at_ms else 0

    def success(self, job: Job, result: UpstreamResult, queued_ms: int) -> Outcome:
        now_ms = self._wall_ms()
        fields = messages.response_fields(result.message)
        cost = result_cost(self._prices, result)
        response: ClaudeResponse = {
            "request_id": job.request_id,
            "partner_id": job.partner_id,
            "status": Status.OK.value,
            **fields,  # type: ignore[typeddict-item]
            "error_type": None,
            "error_message": None,
            "attempts": job.attempts,
            "latency_ms": self._latency_ms(job.request["created_at_ms"], now_ms),
            "completed_at_ms": now_ms,
            "upstream_request_id": result.request_id,
            "cached": result.cached,
        }
        usage: UsageRecord = {
            "request_id": job.request_id,
            "partner_id": job.partner_id,
            "model": result.model,
            "status": Status.OK.value,
            "http_status": result.status,
            **usage_tokens(fields["usage"]),  # type: ignore[typeddict-item]
            **usage_details(result.message.get("usage")),
            "cost_usd": cost,
            "queued_ms": queued_ms,
            "upstream_ms": int(job.upstream_s * 1000),
            "attempts": job.attempts,
            "ts_ms": now_ms,
            "reason": None,
            "upstream_request_id": result.request_id,
            "cached": result.cached,
        }
        return Outcome(job.record, job.partner_id, job.request_id, Status.OK, response, usage, None)

    def bare(self, record: SourceRecord, error: RequestError) -> Outcome:
        """A dead letter of nothing but the record's position and `error`: what is
        left when nothing a record says can be encoded. Its payload stays at its
        source offset (never replayed from here: it was not verified)."""
        payload = record.value or b""
        dead_letter: DeadLetter = {
            "partner_id": None,
            "request_id": None,
            "reason": error.reason.value,
            "detail": f"{error.detail} [no outcome could be encoded; the record stays "
            "at its source offset]",
            "source_topic": record.topic,
            "source_partition": record.partition,
            "source_offset": record.offset,
            "payload": b"",
            "headers": {},
            "attempts": 0,
            "failed_at_ms": self._wall_ms(),
            "replay_count": 0,
            "source_key": None,
            "error_type": error.error_type,
            "payload_bytes": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
        }
        return Outcome(record, None, None, Status.ERROR, None, None, dead_letter)

    def failure(
        self,
        record: SourceRecord,
        error: RequestError,
        *,
        partner_id: str | None,
        request_id: str | None,
        request: Mapping[str, object] | None = None,
        job: Job | None = None,
        queued_ms: int = 0,
        replay_count: int = 0,
        respond: bool = True,
        verified: bool = False,
    ) -> Outcome:
        """A failed request's outcome. With `respond=False` (an audit entry for a
        duplicate), only the dead letter: the original's outcome is the partner's.
        `verified`: the record's signature was checked (always so with a job); only
        such a dead letter can be replayed."""
        now_ms = self._wall_ms()
        attempts = job.attempts if job is not None else error.attempts
        model = str(request.get("model", "")) if request else ""
        dead_letter: DeadLetter = {
            "partner_id": partner_id,
            "request_id": request_id,
            "reason": error.reason.value,
            "detail": error.detail,
            "source_topic": record.topic,
            "source_partition": record.partition,
            "source_offset": record.offset,
            "payload": b"",
            "headers": {k: v for k, v in record.header_map().items() if k not in SIGNATURE_HEADERS},
            "attempts": attempts,
            "failed_at_ms": now_ms,
            "replay_count": min(
                max(0, job.replay_count if job is not None else replay_count), MAX_AVRO_INT
            ),
            "source_key": record.key,
            "error_type": error.error_type,
            "payload_bytes": None,
            "payload_sha256": None,
        }
        payload = record.value or b""
        never = error.reason in NEVER_REPLAYED or not error.copy_payload
        if never and len(payload) > HEAVY_BYTES:
            # Never replayed, so a copy would only cost: the record stays at its
            # source offset for the topic's retention, recognisable by its digest.
            digest = hashlib.sha256(payload).hexdigest()
            why = error.reason.value if error.copy_payload else "a request past the bounds"
            dead_letter["detail"] += (
                f" [payload of {len(payload)} bytes kept only at its source offset: "
                f"{why} is never replayed; sha256 {digest}]"
            )
            dead_letter["payload_bytes"] = len(payload)
            dead_letter["payload_sha256"] = digest
        else:
            dead_letter["payload"] = self._sealed(partner_id, record, verified or job is not None)
        if request_id is None or partner_id is None or not respond:
            return Outcome(record, partner_id, request_id, Status.ERROR, None, None, dead_letter)
        created = request.get("created_at_ms") if request else None
        created = created if isinstance(created, int) else None
        response: ClaudeResponse = {
            "request_id": request_id,
            "partner_id": partner_id,
            "status": Status.ERROR.value,
            "model": model or None,
            "content": None,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _no_usage(),
            "error_type": error.reason.value,
            "error_message": error.public,
            "attempts": attempts,
            "latency_ms": self._latency_ms(created, now_ms),
            "completed_at_ms": now_ms,
            "upstream_request_id": None,
            "message_id": None,
            "blocks": None,
            "extra_json": None,
        }
        usage: UsageRecord = {
            "request_id": request_id,
            "partner_id": partner_id,
            "model": model,
            "status": Status.ERROR.value,
            "http_status": job.progress.last_status if job is not None else None,
            **_NO_TOKENS,  # type: ignore[typeddict-item]
            "cache_creation_5m_input_tokens": 0,
            "cache_creation_1h_input_tokens": 0,
            "web_search_requests": 0,
            "web_fetch_requests": 0,
            "service_tier": None,
            **_NO_DETAILS,
            "cost_usd": 0.0,
            "queued_ms": queued_ms,
            "upstream_ms": int(job.upstream_s * 1000) if job is not None else 0,
            "attempts": attempts,
            "ts_ms": now_ms,
            "reason": error.reason.value,
            "upstream_request_id": None,
        }
        return Outcome(record, partner_id, request_id, Status.ERROR, response, usage, dead_letter)


#: What a served request's usage record keeps when its response cannot be published.
_BILLED = (
    "model",
    "http_status",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
    "web_search_requests",
    "web_fetch_requests",
    "service_tier",
    *_NO_DETAILS,
    "cost_usd",
    "upstream_request_id",
)


def record_size(message: OutMessage) -> int:
    """Bytes a record takes against a size limit: value, key and headers."""
    return (
        len(message.value)
        + len(message.key or b"")
        + sum(len(k) + len(v) for k, v in message.headers)
    )


def withhold_payload(dead_letter: DeadLetter, limit: int) -> DeadLetter:
    """A dead letter without its payload, saying what was withheld and how to recognise it."""
    payload = bytes(dead_letter["payload"])
    digest = hashlib.sha256(payload).hexdigest()
    note = (
        f" [payload of {len(payload)} bytes withheld: the dead letter would exceed the "
        f"{limit}-byte record limit; sha256 {digest}]"
    )
    return {
        **dead_letter,
        "payload": b"",
        "detail": dead_letter["detail"] + note,
        "payload_bytes": len(payload),
        "payload_sha256": digest,
    }


def fit(
    builder: OutcomeBuilder, outcome: Outcome, job: Job | None, codec: Codec, limit: int
) -> tuple[Outcome, list[OutMessage]]:
    """The outcome's records, each within `limit` bytes, so one request can never
    stop the worker with a record the broker refuses.

    A response too large to publish fails its request (`invalid_request`: lower
    max_tokens) while its usage record keeps what Claude billed; a dead letter too
    large withholds its payload (its size and SHA-256 stay in it).
    """
    messages_ = outcome.messages(codec)
    too_big = [m for m in messages_ if record_size(m) > limit]
    if not too_big:
        return outcome, messages_
    response = next((m for m in too_big if m.topic.startswith(RESPONSES_PREFIX)), None)
    if response is not None and outcome.status is Status.OK and outcome.usage is not None:
        failed = builder.failure(
            outcome.record,
            InvalidRequest(
                f"the response ({record_size(response)} bytes) exceeds the "
                f"{limit}-byte record limit: lower max_tokens"
            ),
            partner_id=outcome.partner_id,
            request_id=outcome.request_id,
            request=job.request if job is not None else None,
            job=job,
            queued_ms=outcome.usage["queued_ms"],
        )
        assert failed.usage is not None  # noqa: S101 (a failure with an id has usage)
        # Claude answered and billed it: the usage record says so.
        billed = {k: outcome.usage[k] for k in _BILLED}  # type: ignore[literal-required]
        outcome = dataclasses.replace(failed, usage=cast(UsageRecord, {**failed.usage, **billed}))
        messages_ = outcome.messages(codec)
    dead = next((m for m in messages_ if m.topic == DLQ_TOPIC), None)
    if dead is not None and record_size(dead) > limit and outcome.dead_letter is not None:
        outcome = dataclasses.replace(
            outcome, dead_letter=withhold_payload(outcome.dead_letter, limit)
        )
        messages_ = outcome.messages(codec)
    return outcome, messages_


def last_resort(
    builder: OutcomeBuilder, outcome: Outcome, job: Job | None, codec: Codec, error: RequestError
) -> tuple[Outcome, list[OutMessage]]:
    """The records of an outcome that could not be encoded (`error` says so): the
    request fails with what the worker itself computed, and if even that cannot be
    encoded, a dead letter that names only the record's position. Either way the
    record ends in a dead letter and can be acked: one record must never stop
    the worker, and then the next worker it is redelivered to."""
    try:
        failed = builder.failure(
            outcome.record,
            error,
            partner_id=outcome.partner_id,
            request_id=outcome.request_id,
            job=job,
            verified=job is not None,
        )
        if outcome.status is Status.OK and outcome.usage is not None and failed.usage:
            billed = {k: outcome.usage[k] for k in _BILLED}  # type: ignore[literal-required]
            failed = dataclasses.replace(
                failed, usage=cast(UsageRecord, {**failed.usage, **billed})
            )
        return failed, failed.messages(codec)
    except Exception:
        bare = builder.bare(outcome.record, error)
        return bare, bare.messages(codec)
