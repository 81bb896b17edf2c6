"""The simulator's core: auth, validation, limits, faults, billing, stats.

No HTTP here: the server turns requests into calls on `Simulator` and its
answers into responses. Time comes from injected clocks, so every number is
testable exactly.
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.dev.sim.batches import BatchStore
from pipeline.dev.sim.cache import CacheUsage, PromptCache
from pipeline.dev.sim.catalog import MODELS, bill, find_model
from pipeline.dev.sim.config import FAULT_KINDS, SimConfig
from pipeline.dev.sim.errors import ApiError, invalid
from pipeline.dev.sim.faults import FaultInjector
from pipeline.dev.sim.generate import Generated, generate
from pipeline.dev.sim.heavy import Checked
from pipeline.dev.sim.limits import Clock, KeyLimits
from pipeline.dev.sim.validate import MessagesRequest, validate_count_tokens, validate_messages
from pipeline.limits import tokens

__all__ = ["ApiError", "KeyStats", "Prepared", "Simulator"]

#: `anthropic-version` is a release date; the SDK sends its own (newer SDKs, newer dates).
_VERSION = re.compile(r"20\d\d-[01]\d-[0-3]\d")
#: Where a request that names no region runs (usage.inference_geo).
DEFAULT_INFERENCE_GEO = "global"


@dataclass
class KeyStats:
    requests: Counter[str] = field(default_factory=Counter)
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    #: The key's bill (`catalog.bill`): every call and batch result, as Anthropic charges.
    cost_usd: float = 0.0
    #: Message Batches created, their requests, and requests whose custom_id an
    #: earlier batch of the key already carried (a batch submitted twice).
    batches: int = 0
    batch_requests: int = 0
    batch_resubmitted: int = 0
    custom_ids: set[str] = field(default_factory=set)

    def add(self, usage: Mapping[str, int], cost_usd: float = 0.0) -> None:
        self.input_tokens += usage.get("input_tokens", 0)
        self.output_tokens += usage.get("output_tokens", 0)
        self.cache_read_input_tokens += usage.get("cache_read_input_tokens", 0)
        self.cache_creation_input_tokens += usage.get("cache_creation_input_tokens", 0)
        self.cost_usd += cost_usd

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "rate_limited": self.requests.get("429", 0),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cost_usd": round(self.cost_usd, 9),
            "batches": self.batches,
            "batch_requests": self.batch_requests,
            "batch_resubmitted": self.batch_resubmitted,
        }


@dataclass(frozen=True)
class Prepared:
    """An admitted Messages request, ready to be "generated"."""

    key: str
    request: MessagesRequest
    usage: CacheUsage
    reply: Generated
    fault: str | None  # "timeout" or "reset": the transport misbehaves
    delay_s: float  # how long the generation takes


class Simulator:
    def __init__(
        self,
        config: SimConfig,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self.config = config
        self._clock = clock
        self._wall = wall
        self._latency_rng = random.Random(None if config.seed is None else config.seed + 1)
        self.reset()

    def reset(self) -> None:
        """Forget limits, caches, stats and faults' position: a fresh simulator."""
        cfg = self.config
        self._limits: dict[str, KeyLimits] = {}
        self._faults = FaultInjector(cfg.fail_rates, cfg.seed)
        self._key_faults = {
            key: FaultInjector(rates, cfg.seed) for key, rates in cfg.key_fail_rates.items()
        }
        self.cache = PromptCache(
            cfg.cache_ttl_s, cfg.cache_min_tokens, self._clock, cfg.cache_ttl_1h_s
        )
        self.exchanges: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=max(1, cfg.record_exchanges)
        )
        self.stats: dict[str, KeyStats] = {}
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()
        self.batches = BatchStore(self)

    def set_faults(self, rates: Mapping[str, float]) -> None:
        """Replace the fault rates of every key, now (POST /_sim/faults): the chaos
        run turns an outage on and off this way. ValueError names a bad rate."""
        for kind, p in rates.items():
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}")
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"fault rate {kind}={p} is not within [0, 1]")
        if sum(float(p) for p in rates.values()) > 1.0 + 1e-9:
            raise ValueError("fault rates add up to more than 1")
        self._faults = FaultInjector({k: float(p) for k, p in rates.items()}, self.config.seed)
        self._key_faults = {}

    def now(self) -> float:
        return self._clock()

    def wall(self) -> float:
        return self._wall()

    # -- identity ---------------------------------------------------------

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_sim{self._id_prefix}{next(self._ids):012d}"

    def authenticate(self, headers: Mapping[str, str]) -> str:
        """The caller's API key, or an ApiError (401 or, without a version, 400)."""
        key = headers.get("x-api-key")
        if key is None:
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                key = auth[7:].strip()
        if not key:
            raise ApiError(401, "authentication_error", "x-api-key header is required")
        if self.config.keys and key not in self.config.keys:
            self.record(key, 401)
            raise ApiError(401, "authentication_error", "invalid x-api-key")
        version = headers.get("anthropic-version")
        if version is None:
            self.record(key, 400)
            raise ApiError(400, "invalid_request_error", "anthropic-version: header is required")
        if not _VERSION.fullmatch(version):
            self.record(key, 400)
            raise ApiError(
                400, "invalid_request_error", f"anthropic-version: unknown version {version!r}"
            )
        return key

    # -- limits and stats ------------------------------------------------

    def limits_for(self, key: str) -> KeyLimits:
        limits = self._limits.get(key)
        if limits is None:
            cfg = self.config
            limits = KeyLimits(cfg.rpm, cfg.itpm, cfg.otpm, cfg.burst, self._clock, self._wall)
            self._limits[key] = limits
        return limits

    def ratelimit_headers(self, key: str) -> dict[str, str]:
        return self.limits_for(key).headers()

    def record(
        self,
        key: str,
        status: int | str,
        usage: Mapping[str, int] | None = None,
        cost_usd: float = 0.0,
    ) -> None:
        stats = self.stats.get(key)
        if stats is None:
            stats = self.stats[key] = KeyStats()
        stats.requests[str(status)] += 1
        if usage:
            stats.add(usage, cost_usd)

    def stats_snapshot(self) -> dict[str, Any]:
        keys = {k: s.as_dict() for k, s in self.stats.items()}
        totals = KeyStats()
        for s in self.stats.values():
            totals.requests.update(s.requests)
            totals.add(s.as_dict(), s.cost_usd)
        return {"keys": keys, "totals": totals.as_dict()}

    # -- the Messages API -------------------------------------------------

    def prepare(
        self, key: str, body: object, checked: Checked | None = None, betas: Sequence[str] = ()
    ) -> Prepared:
        """Validate, draw a fault, admit against the key's limits, generate.

        Raises ApiError for every refusal (400/404/429/500/529), already
        recorded in the stats with the rate-limit headers attached. A large
        body comes `checked` (validated and counted in `pipeline.dev.sim.heavy`'s
        helper process) and `body` None.
        """
        if checked is not None:
            req = checked.request
        else:
            try:
                req = validate_messages(body, betas)
            except ApiError as exc:
                self.record(key, exc.status)
                raise
        fault = self._key_faults.get(key, self._faults).draw()
        limits = self.limits_for(key)
        if fault in ("500", "529", "429"):
            self.record(key, fault)
            raise _injected(fault, limits.headers())
        usage = self._input_usage(key, req, None if checked is None else checked.input_tokens)
        # Cache reads do not count towards the input-token limit.
        rejection = limits.admit(usage.input_tokens + usage.cache_creation_input_tokens)
        if rejection is not None:
            self.record(key, 429)
            headers = limits.headers()
            headers["retry-after"] = str(rejection.retry_after)
            raise ApiError(429, "rate_limit_error", rejection.message, headers)
        reply = self._generate(req)
        delay = self._delay(reply.output_tokens)
        return Prepared(key, req, usage, reply, fault, delay)

    def _input_usage(self, key: str, req: MessagesRequest, total: int | None = None) -> CacheUsage:
        total_input = (
            tokens.count_request(req.messages, req.system, req.tools) if total is None else total
        )
        window = req.model.context_window
        if total_input > window:
            self.record(key, 400)
            raise invalid(f"prompt is too long: {total_input} tokens > {window} maximum")
        return self.cache.usage(
            key, req.model.id, req.system, req.messages, req.tools, total_input, req.cache_control
        )

    def _generate(self, req: MessagesRequest) -> Generated:
        return generate(
            req.messages,
            req.max_tokens,
            req.stop_sequences,
            self.config.output_tokens,
            tools=req.tools,
            tool_choice=req.tool_choice,
            thinking_budget=req.thinking_budget,
        )

    def _delay(self, output_tokens: int) -> float:
        cfg = self.config
        ms = cfg.latency_ms + cfg.ms_per_output_token * output_tokens
        if cfg.jitter_ms:
            ms += self._latency_rng.uniform(-cfg.jitter_ms, cfg.jitter_ms)
        return max(0.0, ms / 1000.0)

    def complete(self, prepared: Prepared, message_id: str) -> dict[str, Any]:
        """Bill the output, record the success and build the Message object."""
        usage = usage_dict(prepared)
        self.limits_for(prepared.key).charge_output(prepared.reply.output_tokens)
        self.record(prepared.key, 200, usage, _bill(prepared))
        return message_object(prepared, message_id, usage)

    def remember(
        self,
        request_id: str,
        body: object,
        response: object,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Keep an exchange for `GET /_sim/exchanges` (when `record_exchanges` is on):
        the body, the response and the request's headers that select what ran it
        (`anthropic-beta`, `anthropic-workspace-id`)."""
        if self.config.record_exchanges > 0:
            self.exchanges.append(
                {
                    "request_id": request_id,
                    "request": body,
                    "response": response,
                    "headers": dict(headers or {}),
                }
            )

    def batch_created(self, key: str, custom_ids: Sequence[str]) -> None:
        stats = self.stats.setdefault(key, KeyStats())
        stats.batches += 1
        stats.batch_requests += len(custom_ids)
        stats.batch_resubmitted += sum(1 for c in custom_ids if c in stats.custom_ids)
        stats.custom_ids.update(custom_ids)

    def batch_result(self, key: str, params: object) -> dict[str, Any]:
        """One batch request's result; batches have their own limits, so none apply."""
        try:
            req = validate_messages(params)
        except ApiError as exc:
            return _errored(exc, self.new_id("req"))
        if req.stream:
            return _errored(invalid("stream: not supported in batches"), self.new_id("req"))
        try:
            usage = self._input_usage(key, req)
        except ApiError as exc:
            return _errored(exc, self.new_id("req"))
        prepared = Prepared(key, req, usage, self._generate(req), None, 0.0)
        counts = usage_dict(prepared)
        self.stats.setdefault(key, KeyStats()).add(counts, _bill(prepared, batch=True))
        message = message_object(prepared, self.new_id("msg"), counts)
        message["usage"]["service_tier"] = "batch"  # as Anthropic reports a batch's work
        return {"type": "succeeded", "message": message}

    def count_tokens(self, key: str, body: object, betas: Sequence[str] = ()) -> dict[str, int]:
        try:
            _, messages, system, tools = validate_count_tokens(body, betas)
        except ApiError as exc:
            self.record(key, exc.status)
            raise
        self.record(key, 200)
        return {"input_tokens": tokens.count_request(messages, system, tools)}


def _bill(prepared: Prepared, batch: bool = False) -> float:
    usage = prepared.usage
    return bill(
        prepared.request.model,
        input_tokens=usage.input_tokens,
        output_tokens=prepared.reply.output_tokens,
        cache_5m=usage.cache_creation_5m_input_tokens,
        cache_1h=usage.cache_creation_1h_input_tokens,
        cache_read=usage.cache_read_input_tokens,
        batch=batch,
    )


def usage_dict(prepared: Prepared) -> dict[str, int]:
    return {
        "input_tokens": prepared.usage.input_tokens,
        "output_tokens": prepared.reply.output_tokens,
        "cache_creation_input_tokens": prepared.usage.cache_creation_input_tokens,
        "cache_read_input_tokens": prepared.usage.cache_read_input_tokens,
    }


def usage_object(prepared: Prepared, usage: Mapping[str, int]) -> dict[str, Any]:
    """The Messages API `usage` object: token counts, the cache-write split, the
    tier, the speed and region it ran at, and the output spent on thinking."""
    reply, req = prepared.reply, prepared.request
    thinking = sum(
        n
        for block, n in zip(reply.blocks, reply.block_tokens, strict=False)
        if block["type"] in ("thinking", "redacted_thinking")
    )
    out: dict[str, Any] = {
        **usage,
        "cache_creation": {
            "ephemeral_5m_input_tokens": prepared.usage.cache_creation_5m_input_tokens,
            "ephemeral_1h_input_tokens": prepared.usage.cache_creation_1h_input_tokens,
        },
        "service_tier": "standard",
        "speed": req.speed or "standard",
        "inference_geo": req.inference_geo or DEFAULT_INFERENCE_GEO,
    }
    if thinking:
        out["output_tokens_details"] = {"thinking_tokens": thinking}
    return out


def message_object(prepared: Prepared, message_id: str, usage: Mapping[str, int]) -> dict[str, Any]:
    reply = prepared.reply
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": prepared.request.model.id,
        "content": [dict(b) for b in reply.blocks],
        "stop_reason": reply.stop_reason,
        "stop_sequence": reply.stop_sequence,
        "usage": usage_object(prepared, usage),
    }


def model_object(model_id: str) -> dict[str, Any]:
    info = find_model(model_id)
    if info is None:
        raise ApiError(404, "not_found_error", f"model: {model_id}")
    return {
        "type": "model",
        "id": info.id,
        "display_name": info.display_name,
        "created_at": info.created_at,
    }


_INJECTED = {
    "500": (500, "api_error", "Internal server error"),
    "529": (529, "overloaded_error", "Overloaded"),
    "429": (
        429,
        "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit (injected fault)",
    ),
}


def _injected(kind: str, headers: dict[str, str]) -> ApiError:
    status, error_type, message = _INJECTED[kind]
    if status == 429:
        headers["retry-after"] = "1"
    return ApiError(status, error_type, message, headers)


def models_page() -> dict[str, Any]:
    """GET /v1/models: every model the simulator knows, one page."""
    data = [model_object(m.id) for m in MODELS]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def _errored(exc: ApiError, request_id: str) -> dict[str, Any]:
    """A batch request's result when Claude would have refused it."""
    return {
        "type": "errored",
        "error": {
            "type": "error",
            "error": {"type": exc.error_type, "message": exc.message},
            "request_id": request_id,
        },
    }
