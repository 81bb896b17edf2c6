"""The models the simulator serves, with the limits the real API enforces."""

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


MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("claude-opus-4-8", "Claude Opus 4.8", "2026-09-15T00:00:00Z", 128_000),
    ModelInfo("claude-opus-4-7", "Claude Opus 4.7", "2026-06-10T00:00:00Z", 128_000),
    ModelInfo("claude-opus-4-6", "Claude Opus 4.6", "2026-02-05T00:00:00Z", 128_000),
    ModelInfo("claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-17T00:00:00Z", 64_000),
    ModelInfo(
        "claude-opus-4-5-20251101",
        "Claude Opus 4.5",
        "2025-11-24T00:00:00Z",
        64_000,
        ("claude-opus-4-5",),
    ),
    ModelInfo(
        "claude-haiku-4-5-20251001",
        "Claude Haiku 4.5",
        "2025-10-15T00:00:00Z",
        64_000,
        ("claude-haiku-4-5",),
    ),
    ModelInfo(
        "claude-sonnet-4-5-20250929",
        "Claude Sonnet 4.5",
        "2025-09-29T00:00:00Z",
        64_000,
        ("claude-sonnet-4-5",),
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
