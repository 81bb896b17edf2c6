"""Plain data passed between the stages of a worker (no I/O here)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.partners import Partner
from pipeline.ratelimit import Cost
from pipeline.state import Reservation

Headers = list[tuple[str, bytes]]
AckFn = Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class SourceRecord:
    """A record as Kafka delivered it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int | None = None

    @property
    def position(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)

    def header_map(self) -> dict[str, bytes]:
        # Last one wins, as in most Kafka clients' dict views.
        return dict(self.headers)


@dataclass
class Job:
    """An admitted request on its way to Claude and back."""

    record: SourceRecord
    partner: Partner
    request: dict[str, Any]  # the ClaudeRequest record
    params: dict[str, Any]  # the Messages API params it stands for (what Claude receives)
    replay_count: int
    received_mono: float
    est_input_tokens: int
    acks: list[AckFn] = field(default_factory=list)
    attempts: int = 0
    upstream_s: float = 0.0
    first_dispatch_mono: float | None = None
    last_status: int | None = None
    last_error_type: str | None = None
    key_id: str | None = None
    charged: bool = False  # the limiter holds this attempt's charge
    dispatch_seq: int = -1  # the limiter's number for this attempt
    over_budget: str | None = None  # why a budget refuses it (quota_exceeded)
    reservation: Reservation | None = None  # budget held while it runs
    durable: list[Awaitable[Any] | None] = field(default_factory=list)  # writes to await
    deadline_timer: asyncio.TimerHandle | None = None
    worst_case: tuple[float, float] | None = None  # (tokens, usd) it may spend at most

    @property
    def request_id(self) -> str:
        return str(self.request["request_id"])

    @property
    def partner_id(self) -> str:
        return self.partner.partner_id

    @property
    def estimated_tokens(self) -> int:
        """What the scheduler plans with: every input token plus the whole max_tokens."""
        return self.est_input_tokens + int(self.request["max_tokens"])

    @property
    def cost(self) -> Cost:
        """What the rate limits are charged at dispatch (the worst case for output)."""
        return Cost(self.est_input_tokens, int(self.request["max_tokens"]))

    @property
    def queued_ms(self) -> int:
        if self.first_dispatch_mono is None:
            return 0
        return int((self.first_dispatch_mono - self.received_mono) * 1000)


@dataclass(frozen=True)
class OutMessage:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers = field(default_factory=list)
