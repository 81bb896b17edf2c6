"""The data that crosses module boundaries, typed: records as the .avsc define them,
a request as admitted (immutable) and what happens to it (its progress).

No I/O here. Content blocks, tools and other unions of records keep fastavro's
tuple notation (see pipeline/messages/) and are typed as `Any` at this level.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

from pipeline.limits.ratelimit import Cost
from pipeline.limits.tokens import MAX_OUTPUT_TOKENS
from pipeline.partners import Partner
from pipeline.state import Reservation

Headers = list[tuple[str, bytes]]
AckFn = Callable[[], Awaitable[Any]]
#: A Messages API params dict: what `client.messages.create` takes, what Claude receives.
Params = dict[str, Any]


class Status(StrEnum):
    OK = "ok"
    ERROR = "error"


# -- the records of schemas/*.avsc (current versions) ---------------------------------


class ClaudeRequest(TypedDict):
    request_id: str
    partner_id: str
    model: str
    max_tokens: int
    messages: list[dict[str, Any]]
    system: Any
    temperature: float | None
    top_p: float | None
    top_k: int | None
    stop_sequences: list[str]
    metadata: dict[str, str]
    priority: str
    deadline_ms: int | None
    created_at_ms: int
    tools: list[Any] | None
    tool_choice: dict[str, Any] | None
    thinking: dict[str, Any] | None
    service_tier: str | None
    cache_control: dict[str, Any] | None
    extra_params_json: str | None
    betas: list[str]


class TokenUsage(TypedDict):
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    cache_creation: dict[str, int] | None
    server_tool_use: dict[str, int] | None
    service_tier: str | None


class ClaudeResponse(TypedDict):
    request_id: str
    partner_id: str
    status: str
    model: str | None
    content: str | None
    stop_reason: str | None
    usage: TokenUsage
    error_type: str | None
    error_message: str | None
    attempts: int
    latency_ms: int
    completed_at_ms: int
    stop_sequence: str | None
    upstream_request_id: str | None
    message_id: str | None
    blocks: list[Any] | None
    extra_json: str | None
    cached: NotRequired[bool]


class UsageRecord(TypedDict):
    request_id: str
    partner_id: str
    model: str
    status: str
    http_status: int | None
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    cost_usd: float
    queued_ms: int
    upstream_ms: int
    attempts: int
    ts_ms: int
    reason: str | None
    upstream_request_id: str | None
    cache_creation_5m_input_tokens: int
    cache_creation_1h_input_tokens: int
    web_search_requests: int
    web_fetch_requests: int
    service_tier: str | None
    thinking_tokens: int | None
    speed: str | None
    inference_geo: str | None
    server_tool_use_json: str | None
    cached: NotRequired[bool]


class DeadLetter(TypedDict):
    partner_id: str | None
    request_id: str | None
    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    payload: bytes
    headers: dict[str, bytes]
    attempts: int
    failed_at_ms: int
    replay_count: int
    source_key: bytes | None
    error_type: str | None
    payload_bytes: int | None
    payload_sha256: str | None


# -- a record as Kafka delivered it ------------------------------------------------------


@dataclass(frozen=True)
class SourceRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int | None = None
    #: When (time.monotonic) Faust's stream took it from the agent's buffer, and
    #: when our handler got it: where its intake time went (see `Reporter`).
    fetched_mono: float | None = field(default=None, compare=False)
    arrived_mono: float | None = field(default=None, compare=False)

    @property
    def position(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)

    def header_map(self) -> dict[str, bytes]:
        # Last one wins, as in most Kafka clients' dict views.
        return dict(self.headers)


#: A record larger than this is worked on off the event loop where that is where
#: the time goes: taken in (verified, decoded, refused) and encoded for Claude.
#: Measured: a 10 MB value, or ten thousand messages, held the loop 50-100 ms.
HEAVY_BYTES = 256 * 1024


@dataclass(frozen=True)
class OutMessage:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers = field(default_factory=list)


# -- a request on its way ------------------------------------------------------------------


@dataclass(frozen=True)
class Admitted:
    """A request that passed intake. It never changes after that."""

    record: SourceRecord
    partner: Partner  # as it was at intake; the registry may change later
    request: ClaudeRequest
    params: Params  # what Claude receives
    replay_count: int
    received_mono: float
    est_input_tokens: int  # what the scheduler plans with
    #: The most it can spend, for budget reservations: tokens and dollars.
    worst_tokens: float = 0.0
    worst_usd: float = 0.0
    #: `params` as Claude's JSON body, when encoded at intake (a heavy request's,
    #: by the examiner process); None: encoded when called.
    body: bytes | None = field(default=None, repr=False)

    @property
    def request_id(self) -> str:
        return self.request["request_id"]

    @property
    def partner_id(self) -> str:
        return self.partner.partner_id

    @property
    def max_tokens(self) -> int:
        return self.request["max_tokens"]

    @property
    def deadline_ms(self) -> int | None:
        return self.request["deadline_ms"]

    @property
    def cost(self) -> Cost:
        """What the rate limits are charged at dispatch: the worst case for output,
        but never more than any model can write (a max_tokens of 2**31 would
        otherwise hold the key's output bucket for days before Claude refuses it)."""
        return Cost(self.est_input_tokens, min(self.max_tokens, MAX_OUTPUT_TOKENS))


@dataclass(frozen=True)
class Charge:
    """What one dispatch took from the rate limits, until it is settled."""

    key_id: str
    seq: int  # the limiter's number for this dispatch
    cost: Cost


@dataclass
class Progress:
    """What happens to an admitted request: attempts, time spent, what it holds."""

    attempts: int = 0
    upstream_s: float = 0.0
    first_dispatch_mono: float | None = None
    last_status: int | None = None
    key_id: str | None = None  # the queue it waits in
    #: The key ref its first attempt used (None: the default key), once it made one.
    key_ref: str | None = None
    key_pinned: bool = False
    charge: Charge | None = None  # held between dispatch and the end of the attempt
    reservation: Reservation | None = None  # budget held while it runs
    durable: list[Awaitable[Any] | None] = field(default_factory=list)  # writes to await
    #: State writes made with the outcome (in its transaction, when there is one).
    with_outcome: list[Callable[[], Awaitable[Any] | None]] = field(default_factory=list)
    #: On the batch lane (its limits are the Batches API's, its price half) ...
    batch: bool = False
    #: ... or taken off it (its batch failed it): served as an interactive request.
    interactive: bool = False
    #: Its key in the response cache, when its answer may be kept there.
    cache_key: str | None = None
    deadline_timer: asyncio.TimerHandle | None = None


@dataclass
class Job:
    """An admitted request and its progress: what the queue, the attempts and the
    completion pass around."""

    admitted: Admitted
    progress: Progress = field(default_factory=Progress)

    @property
    def record(self) -> SourceRecord:
        return self.admitted.record

    @property
    def request(self) -> ClaudeRequest:
        return self.admitted.request

    @property
    def request_id(self) -> str:
        return self.admitted.request_id

    @property
    def partner_id(self) -> str:
        return self.admitted.partner_id

    @property
    def replay_count(self) -> int:
        return self.admitted.replay_count

    @property
    def attempts(self) -> int:
        return self.progress.attempts

    @property
    def upstream_s(self) -> float:
        return self.progress.upstream_s

    @property
    def queued_ms(self) -> int:
        first = self.progress.first_dispatch_mono
        return 0 if first is None else int((first - self.admitted.received_mono) * 1000)
