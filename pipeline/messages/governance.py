"""Which Messages API parameters travel, and how: typed, carried as given, refused
by name, or carried only with a beta. Every parameter of the SDK's `create` and
`beta.messages.create` is in one of these tables (a test enumerates the SDK's)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.messages.values import WireError

TYPED_PARAMS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "metadata",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "cache_control",
    }
)

#: Parameters a partner's request cannot carry, and why: `request_record`
#: refuses each by name (nothing is dropped silently), and the worker refuses
#: them in `extra_params_json`.
REFUSED: dict[str, str] = {
    "stream": "streaming does not travel over Kafka (the gateway streams)",
    "workspace_id": "the operator's setting for the partner (partners set --workspace-id), "
    "never a request's",
    "user_profile_id": "the operator's setting for the account, never a partner's",
}

#: The parameters only `beta.messages.create` accepts, and the beta (a name
#: prefix) Claude wants in `anthropic-beta` for each. They travel in
#: `extra_params_json` when the request names a beta (`betas`); without one
#: they are refused by name, as Claude would refuse them.
BETA_PARAMS: dict[str, str] = {
    "mcp_servers": "mcp-client-",
    "context_management": "context-management-",
    "compaction": "compact-",
    "fallbacks": "server-side-fallback-",
    "fallback_credit_token": "fallback-credit-",
    "billing_policy": "user-profiles-billing-",
    "thread": "message-threads-",
}

#: Parameters `extra_params_json` may never carry: the typed ones (the worker
#: governs them: models, max_tokens caps, budgets, limits all read them), the
#: refused ones, and `betas` (a field of its own: the operator allows each).
GOVERNED = TYPED_PARAMS | frozenset(REFUSED) | {"betas"}

#: Parameters of the SDK's `create` that travel in `extra_params_json` exactly
#: as given (Claude validates them): every other key does too, so a parameter
#: newer than the schema still reaches Claude.
CARRIED = frozenset({"speed", "inference_geo", "container", "output_config", "diagnostics"})

#: Keyword arguments of the SDK's `create` that are request options, not API
#: parameters: they cannot travel. (`extra_body` can: the SDK merges it into the
#: JSON body, and so do we. This SDK passes temperature, top_p and top_k that way.)
SDK_OPTIONS = frozenset({"extra_headers", "extra_query", "timeout"})

#: Every keyword the SDK's `create` and `beta.messages.create` take (and the
#: sampling parameters, which this SDK takes through `extra_body`). Any other
#: top-level key is refused, as the SDK refuses it (a TypeError there): a
#: parameter newer than the SDK goes in `extra_body`, the SDK's way, and travels.
SDK_KEYWORDS = (
    TYPED_PARAMS | CARRIED | frozenset(REFUSED) | frozenset(BETA_PARAMS) | SDK_OPTIONS
) | {"betas", "extra_body"}

#: At most this many betas on one request, each a name like `mcp-client-2025-11-20`.
MAX_BETAS = 16
BETA_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}")


def betas_field(value: object, path: str = "betas") -> list[str]:
    """The `betas` of a request (the SDK's `beta.messages.create(betas=...)`)."""
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise WireError(path, "must be a list of beta names like 'mcp-client-2025-11-20'")
    if len(value) > MAX_BETAS:
        raise WireError(path, f"at most {MAX_BETAS} betas")
    for i, name in enumerate(value):
        if not isinstance(name, str) or not BETA_NAME.fullmatch(name):
            raise WireError(f"{path}[{i}]", "not a beta name (lowercase letters, digits, . and -)")
    return list(dict.fromkeys(value))


def beta_params_need_betas(params: Mapping[str, Any], betas: Sequence[str], prefix: str) -> None:
    """A beta-only parameter travels only with a beta named: refuse it by name otherwise."""
    if betas:
        return
    for key, beta in BETA_PARAMS.items():
        if params.get(key) is not None:
            raise WireError(
                f"{prefix}{key}",
                f"a beta parameter: name its beta in betas (a {beta}... beta) and have the "
                "operator allow it for the partner",
            )
