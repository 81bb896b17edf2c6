"""The models the simulator serves, with the limits the real API enforces and
what Anthropic bills for them (the simulator's own list: the pipeline's price
table is checked against this bill, not read by it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelInfo:
    id: str
    display_name: str
    created_at: str  # RFC 3339
    max_output_tokens: int
    aliases: tuple[str, ...] = ()
    context_window: int = 200_000
    #: US dollars per million tokens.
    input_usd: float = 0.0
    output_usd: float = 0.0


MODELS: tuple[ModelInfo, ...] = (
    ModelInfo(
        "claude-opus-4-8",
        "Claude Opus 4.8",
        "2026-09-15T00:00:00Z",
        128_000,
        input_usd=5.0,
        output_usd=25.0,
    ),
    ModelInfo(
        "claude-opus-4-7",
        "Claude Opus 4.7",
        "2026-06-10T00:00:00Z",
        128_000,
        input_usd=5.0,
        output_usd=25.0,
    ),
    ModelInfo(
        "claude-opus-4-6",
        "Claude Opus 4.6",
        "2026-02-05T00:00:00Z",
        128_000,
        input_usd=5.0,
        output_usd=25.0,
    ),
    ModelInfo(
        "claude-sonnet-4-6",
        "Claude Sonnet 4.6",
        "2026-02-17T00:00:00Z",
        64_000,
        input_usd=3.0,
        output_usd=15.0,
    ),
    ModelInfo(
        "claude-opus-4-5-20251101",
        "Claude Opus 4.5",
        "2025-11-24T00:00:00Z",
        64_000,
        ("claude-opus-4-5",),
        input_usd=5.0,
        output_usd=25.0,
    ),
    ModelInfo(
        "claude-haiku-4-5-20251001",
        "Claude Haiku 4.5",
        "2025-10-15T00:00:00Z",
        64_000,
        ("claude-haiku-4-5",),
        input_usd=1.0,
        output_usd=5.0,
    ),
    ModelInfo(
        "claude-sonnet-4-5-20250929",
        "Claude Sonnet 4.5",
        "2025-09-29T00:00:00Z",
        64_000,
        ("claude-sonnet-4-5",),
        input_usd=3.0,
        output_usd=15.0,
    ),
)

_BY_NAME: dict[str, ModelInfo] = {}
for _m in MODELS:
    _BY_NAME[_m.id] = _m
    for _alias in _m.aliases:
        _BY_NAME[_alias] = _m


def find_model(name: str) -> ModelInfo | None:
    """Look a model up by id or alias."""
    return _BY_NAME.get(name)


#: What cache writes and reads cost, over the input price; the Batch API's discount.
CACHE_WRITE_5M, CACHE_WRITE_1H, CACHE_READ, BATCH = 1.25, 2.0, 0.1, 0.5


def bill(
    model: ModelInfo,
    *,
    input_tokens: int,
    output_tokens: int,
    cache_5m: int = 0,
    cache_1h: int = 0,
    cache_read: int = 0,
    batch: bool = False,
) -> float:
    """US dollars for one call, as Anthropic bills it."""
    per_input = model.input_usd / 1_000_000
    dollars = (
        input_tokens * per_input
        + output_tokens * model.output_usd / 1_000_000
        + cache_5m * per_input * CACHE_WRITE_5M
        + cache_1h * per_input * CACHE_WRITE_1H
        + cache_read * per_input * CACHE_READ
    )
    return dollars * BATCH if batch else dollars
