"""The partner registry: a TOML file for admins, a compacted topic for workers.

`partners add|disable|enable|...` edit `PIPELINE_PARTNERS_FILE` and publish the
changed partner to `claude.partners` (key partner_id, value PartnerConfig; a
removal is a PartnerConfig with `removed_at_ms`, so compaction keeps it).
Workers follow that topic, so a change reaches every running worker within a
second, without restarts.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, SecretError
from pipeline.messages.governance import BETA_NAME
from pipeline.security.signing import validate_ref

#: Identifiers are checked with `fullmatch`: `re.match` with `$` also accepts a
#: trailing newline (`acme\n`), which then breaks the TOML file and log lines.
PARTNER_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
#: A model name as the API, Bedrock and Vertex spell them.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")
WORKSPACE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
REQUESTS_PREFIX = "claude.requests."
RESPONSES_PREFIX = "claude.responses."
USAGE_TOPIC = "claude.usage"
DLQ_TOPIC = "claude.dlq"
PARTNERS_TOPIC = "claude.partners"
#: The workers' durable state (see pipeline/kafka/statelog.py): not for partners.
STATE_TOPIC = "claude.pipeline.state"


def check_partner_id(partner_id: str) -> str:
    if not isinstance(partner_id, str) or not PARTNER_ID.fullmatch(partner_id):
        raise ConfigError(f"partner id {partner_id!r} must match [a-z0-9][a-z0-9_-]{{0,62}}")
    return partner_id


def transactional_prefix(group_id: str) -> str:
    """The transactional ids a worker group's producers use (`<group>.txn.<writer>`)."""
    return f"{group_id}.txn."


def requests_topic(partner_id: str) -> str:
    return REQUESTS_PREFIX + partner_id


def responses_topic(partner_id: str) -> str:
    return RESPONSES_PREFIX + partner_id


def partner_of_requests_topic(topic: str) -> str | None:
    if topic.startswith(REQUESTS_PREFIX):
        return topic[len(REQUESTS_PREFIX) :]
    return None


@dataclass(frozen=True)
class Partner:
    """One partner's configuration; field names match the PartnerConfig schema."""

    partner_id: str
    signing_secret_ref: str
    enabled: bool = True
    weight: int = 1
    rpm: int | None = None
    tpm: int | None = None
    daily_token_budget: int | None = None
    monthly_budget_usd: float | None = None
    allowed_models: tuple[str, ...] = ()
    max_tokens_cap: int | None = None
    api_key_ref: str | None = None
    previous_signing_secret_ref: str | None = None
    previous_secret_expires_at_ms: int | None = None
    updated_at_ms: int = 0
    #: The upstream key before the last rotate-key ("" for the default key).
    previous_api_key_ref: str | None = None
    previous_api_key_expires_at_ms: int | None = None
    #: Set on the record `partners remove` writes: the partner is gone, and no
    #: record for it that is not newer than this one may bring it back.
    removed_at_ms: int | None = None
    #: Betas this partner's requests may name (`anthropic-beta`); empty: none.
    betas: tuple[str, ...] = ()
    #: The Workspace its requests run in (`anthropic-workspace-id`); None: the key's.
    workspace_id: str | None = None
    #: A cache breakpoint on a long stable prefix of requests that placed none
    #: (`pipeline/limits/autocache.py`).
    auto_cache: bool = False
    #: How long an answer at temperature 0 is served again to an exact repeat
    #: (`pipeline/lifecycle/responsecache.py`); None: never.
    response_cache_ttl_s: int | None = None

    def __post_init__(self) -> None:
        check_partner_id(self.partner_id)
        if self.weight < 1:
            raise ConfigError(f"partner {self.partner_id}: weight must be >= 1")
        for name in ("rpm", "tpm", "daily_token_budget", "max_tokens_cap", "response_cache_ttl_s"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"partner {self.partner_id}: {name} must be >= 1")
        if self.monthly_budget_usd is not None and self.monthly_budget_usd <= 0:
            raise ConfigError(f"partner {self.partner_id}: monthly_budget_usd must be > 0")
        for model in self.allowed_models:
            if not isinstance(model, str) or not MODEL_NAME.fullmatch(model):
                raise ConfigError(
                    f"partner {self.partner_id}: model {model!r} is not a model name "
                    "(letters, digits and . _ : @ / -)"
                )
        for beta in self.betas:
            if not isinstance(beta, str) or not BETA_NAME.fullmatch(beta):
                raise ConfigError(
                    f"partner {self.partner_id}: beta {beta!r} is not a beta name "
                    "(lowercase letters, digits, . and -, like mcp-client-2025-11-20)"
                )
        if self.workspace_id is not None and not WORKSPACE_ID.fullmatch(self.workspace_id):
            raise ConfigError(
                f"partner {self.partner_id}: workspace_id {self.workspace_id!r} is not a "
                "Workspace id (letters, digits, _ and -, like wrkspc_01...)"
            )
        try:
            validate_ref(self.signing_secret_ref)
            if self.api_key_ref is not None:
                validate_ref(self.api_key_ref)
            if self.previous_signing_secret_ref is not None:
                validate_ref(self.previous_signing_secret_ref)
            if self.previous_api_key_ref:
                validate_ref(self.previous_api_key_ref)
        except SecretError as exc:
            raise ConfigError(f"partner {self.partner_id}: {exc}") from None

    @property
    def has_budget(self) -> bool:
        return self.daily_token_budget is not None or self.monthly_budget_usd is not None

    def api_key_in_grace(self, ref: str | None, now_ms: int) -> bool:
        """Whether `ref` (None: the default key) is the key rotated out and still in
        its grace window, so requests that started on it may finish on it."""
        previous = self.previous_api_key_ref
        if previous is None or self.previous_api_key_expires_at_ms is None:
            return False
        return (previous or None) == ref and now_ms < self.previous_api_key_expires_at_ms

    def allows_model(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models

    def refused_beta(self, betas: Sequence[str]) -> str | None:
        """The first of `betas` this partner may not use, or None."""
        return next((b for b in betas if b not in self.betas), None)

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["allowed_models"] = list(self.allowed_models)
        record["betas"] = list(self.betas)
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Partner:
        known = {f for f in cls.__dataclass_fields__}
        data = {k: v for k, v in record.items() if k in known}
        data["allowed_models"] = tuple(data.get("allowed_models") or ())
        data["betas"] = tuple(data.get("betas") or ())
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"invalid partner record: {exc}") from exc

    def with_(self, **changes: Any) -> Partner:
        return replace(self, **changes)


# -- the TOML file ------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_partners(partners: Mapping[str, Partner]) -> str:
    lines = [
        "# Partner registry of claude-partner-pipeline.",
        "# Edit with `claude-pipeline partners ...`; secrets are references, never values.",
        "",
    ]
    for pid in sorted(partners):
        lines.append(f"[partners.{pid}]")
        for key, value in partners[pid].to_record().items():
            if key == "partner_id" or value is None:
                continue
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def load_partners(path: Path) -> dict[str, Partner]:
    """The registry file as {partner_id: Partner}; a missing file is an empty registry."""
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    partners: dict[str, Partner] = {}
    for pid, entry in (data.get("partners") or {}).items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: [partners.{pid}] must be a table")
        partners[pid] = Partner.from_record({**entry, "partner_id": pid})
    return partners


def save_partners(path: Path, partners: Mapping[str, Partner]) -> None:
    """Write atomically: a crash never leaves half a registry behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(dump_partners(partners))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the in-memory registry a worker keeps -------------------------------------


@dataclass
class Registry:
    """What a worker knows: updated from the claude.partners topic."""

    partners: dict[str, Partner] = field(default_factory=dict)
    #: Removed partners and when: a record for one must be newer to apply.
    removed: dict[str, int] = field(default_factory=dict)
    listeners: list[Callable[[str, Partner | None, Partner | None], None]] = field(
        default_factory=list
    )

    def get(self, partner_id: str) -> Partner | None:
        return self.partners.get(partner_id)

    def __iter__(self) -> Iterator[Partner]:
        return iter(list(self.partners.values()))

    def __len__(self) -> int:
        return len(self.partners)

    def apply(self, partner_id: str, partner: Partner | None, removed_at_ms: int = 0) -> None:
        """Upsert, or remove on a removal record or None (a tombstone, removing
        what was there at `removed_at_ms`); tell listeners what changed."""
        before = self.partners.get(partner_id)
        if partner is not None and partner.removed_at_ms is not None:
            removed_at_ms, partner = partner.updated_at_ms, None
        if partner is None:
            self.partners.pop(partner_id, None)
            floor = max(removed_at_ms, before.updated_at_ms if before else 0)
            self.removed[partner_id] = max(floor, self.removed.get(partner_id, 0))
        else:
            self.partners[partner_id] = partner
            self.removed.pop(partner_id, None)
        if before != partner:
            for listener in self.listeners:
                listener(partner_id, before, partner)
