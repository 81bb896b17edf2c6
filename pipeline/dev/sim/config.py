"""Simulator settings: one frozen object, built from CLI flags or by tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: What `--fail-rate KIND=P` accepts: an HTTP status, or a transport fault.
FAULT_KINDS = ("429", "500", "529", "timeout", "reset")


def parse_fail_rate(spec: str) -> tuple[str, float, str | None]:
    """Parse ``KIND=P`` or ``KIND=P@KEY`` (only that API key suffers it).

    Raises ValueError with a usable message.
    """
    spec, at, key = spec.partition("@")
    if at and not key:
        raise ValueError("--fail-rate KIND=P@KEY needs a key after @")
    kind, sep, value = spec.partition("=")
    kind = kind.strip().lower()
    if not sep:
        raise ValueError(f"--fail-rate expects KIND=P, got {spec!r}")
    if kind not in FAULT_KINDS:
        raise ValueError(f"--fail-rate kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
    try:
        p = float(value)
    except ValueError:
        raise ValueError(f"--fail-rate probability must be a number, got {value!r}") from None
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"--fail-rate probability must be within [0, 1], got {p}")
    return kind, p, key or None


def fail_rate_tables(
    specs: list[tuple[str, float, str | None]],
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Split parsed --fail-rate specs into global rates and per-key rates."""
    global_rates: dict[str, float] = {}
    per_key: dict[str, dict[str, float]] = {}
    for kind, p, key in specs:
        if key is None:
            global_rates[kind] = p
        else:
            per_key.setdefault(key, {})[kind] = p
    return global_rates, per_key


@dataclass(frozen=True)
class SimConfig:
    """How the simulated Claude behaves. Zero for a limit means unlimited."""

    rpm: int = 4_000
    itpm: int = 2_000_000
    otpm: int = 400_000
    #: Capacity of the request bucket (the token buckets shrink in proportion);
    #: None means a full minute's worth, like the per-minute limit itself.
    burst: int | None = None
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    ms_per_output_token: float = 0.0
    #: Fault probabilities by kind (see FAULT_KINDS); drawn once per request.
    fail_rates: Mapping[str, float] = field(default_factory=dict)
    #: Per-API-key fault probabilities; a key listed here ignores `fail_rates`.
    key_fail_rates: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    seed: int | None = None
    #: Accepted API keys; empty accepts any non-empty key.
    keys: frozenset[str] = frozenset()
    #: Fixed reply length in output tokens; None derives 16-64 from the prompt.
    output_tokens: int | None = None
    #: How long a `timeout` fault holds the response before dropping it.
    timeout_hold_s: float = 600.0
    #: Seconds until a message batch ends.
    batch_delay_s: float = 2.0
    cache_ttl_s: float = 300.0
    #: Shortest prefix that can be cached, as on the real API.
    cache_min_tokens: int = 1_024
    max_body_bytes: int = 32 * 1024 * 1024
    #: Keep the last this many (request body, response body) exchanges of
    #: /v1/messages for `GET /_sim/exchanges` (tests compare them with what
    #: partners sent); 0 keeps none.
    record_exchanges: int = 0
    #: TTL of 1-hour cache breakpoints.
    cache_ttl_1h_s: float = 3_600.0

    def __post_init__(self) -> None:
        for name in ("rpm", "itpm", "otpm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.burst is not None and self.burst < 1:
            raise ValueError("burst must be >= 1")
        for rates in (self.fail_rates, *self.key_fail_rates.values()):
            total = sum(rates.values())
            if total > 1.0 + 1e-9:
                raise ValueError(f"fail rates add up to {total:.3f}, more than 1")
            for kind in rates:
                if kind not in FAULT_KINDS:
                    raise ValueError(f"unknown fault kind {kind!r}")
