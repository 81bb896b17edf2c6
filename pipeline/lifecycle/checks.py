"""What a request must be before the worker spends anything on it: the envelope
(headers and key within bounds), its identity (the topic's partner), and the
contract checks the worker owns (Claude validates the rest). Pure functions,
each raising the RequestError a dead letter names.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline import messages
from pipeline.errors import AuthFailed, InvalidRequest
from pipeline.partners import Partner
from pipeline.records import SourceRecord


def check_envelope(record: SourceRecord, max_value_bytes: int) -> None:
    """Limits on what surrounds the value, before anything reads it: one copy of
    each header, headers and key within bounds. (AuthFailed: the envelope carries
    the credentials.)"""
    # Count and size first, then duplicates with a set: all linear, so no number
    # of headers can hold the event loop (a count per name was quadratic).
    if len(record.headers) > MAX_HEADERS:
        raise AuthFailed(f"{len(record.headers)} headers: at most {MAX_HEADERS}")
    size = sum(len(n.encode("utf-8", "surrogatepass")) + len(v) for n, v in record.headers)
    if size > MAX_HEADER_BYTES:
        raise AuthFailed(f"headers of {size} bytes exceed the {MAX_HEADER_BYTES}-byte limit")
    seen: set[str] = set()
    for name, _ in record.headers:
        if name in seen:
            raise AuthFailed(f"header {name} appears more than once")
        seen.add(name)
    if record.key is not None and len(record.key) > MAX_REQUEST_ID_BYTES:
        raise AuthFailed(f"a record key of {len(record.key)} bytes: a request_id is at most 256")
    if record.value is not None and len(record.value) > max_value_bytes:
        raise AuthFailed(f"a value of {len(record.value)} bytes exceeds the record limit")


def check_identity(request: dict[str, Any], topic_partner: str) -> None:
    if request.get("partner_id") != topic_partner:
        raise AuthFailed(
            f"partner_id {request.get('partner_id')!r} in the value does not match "
            f"the topic's {topic_partner!r}"
        )


#: The longest request_id the pipeline accepts (it is the record key and
#: travels in every output record).
MAX_REQUEST_ID_BYTES = 256

#: Headers a record may carry, all together (name and value bytes).
MAX_HEADER_BYTES = 16 * 1024
#: How many headers a record may carry (ours are five; the rest are the partner's).
MAX_HEADERS = 64
#: Characters a request_id may not contain: it is a record key and a log field.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: Cache breakpoint TTLs and their prices are known; others cannot be budgeted.
CACHE_TTLS = ("5m", "1h")


def params_of(request: dict[str, Any]) -> dict[str, Any]:
    """The Messages API params of a decoded record, or InvalidRequest naming the field."""
    try:
        return messages.fields_to_params(request)
    except messages.WireError as exc:
        raise InvalidRequest(str(exc)) from None


def _check_cache_controls(params: dict[str, Any]) -> None:
    def check(item: object, path: str) -> None:
        cc = item.get("cache_control") if isinstance(item, dict) else None
        if isinstance(cc, dict) and cc.get("ttl") is not None and cc["ttl"] not in CACHE_TTLS:
            raise InvalidRequest(f"{path}.cache_control.ttl: must be 5m or 1h")

    check(params, "")
    for i, tool in enumerate(params.get("tools") or ()):
        check(tool, f"tools[{i}]")
    messages.walk_blocks(params, lambda block, path: check(dict(block), path))


def validate(request: dict[str, Any], params: dict[str, Any], partner: Partner) -> None:
    """Contract checks the worker owns (Claude validates the rest)."""
    request_id = str(request["request_id"])
    if not request_id.strip():
        raise InvalidRequest("request_id is empty")
    if len(request_id.encode("utf-8", "surrogatepass")) > MAX_REQUEST_ID_BYTES:
        raise InvalidRequest(f"request_id is longer than {MAX_REQUEST_ID_BYTES} bytes")
    if _CONTROL.search(request_id):
        raise InvalidRequest("request_id contains control characters")
    if not partner.allows_model(request["model"]):
        raise InvalidRequest(f"model {request['model']!r} is not allowed for this partner")
    refused = partner.refused_beta(request.get("betas") or ())
    if refused is not None:
        raise InvalidRequest(
            f"betas: {refused!r} is not allowed for this partner (the operator allows betas "
            "with partners set --betas)"
        )
    max_tokens = request["max_tokens"]
    if max_tokens < 0:  # 0: pre-warm the prompt cache, generating nothing (the API's way)
        raise InvalidRequest("max_tokens must be >= 0")
    if partner.max_tokens_cap is not None and max_tokens > partner.max_tokens_cap:
        raise InvalidRequest(
            f"max_tokens {max_tokens} exceeds this partner's cap of {partner.max_tokens_cap}"
        )
    turns = params["messages"]
    if not turns:
        raise InvalidRequest("messages is empty")
    if turns[0]["role"] != "user":
        raise InvalidRequest("messages[0].role: the first message must have role user")
    for i, message in enumerate(turns):
        if not message["content"]:
            raise InvalidRequest(f"messages[{i}].content is empty")
    temperature = params.get("temperature")
    if temperature is not None and not 0.0 <= temperature <= 1.0:
        raise InvalidRequest("temperature must be within [0, 1]")
    _check_cache_controls(params)
    if partner.daily_token_budget is not None or partner.monthly_budget_usd is not None:
        if params.get("speed") not in (None, "standard"):
            raise InvalidRequest(
                f"speed {params['speed']!r}: the price table has no fast-mode prices, so a "
                "partner with a budget cannot use it"
            )
        for i, tool in enumerate(params.get("tools") or ()):
            kind = tool.get("type")
            if kind not in (None, "custom"):
                raise InvalidRequest(
                    f"tools[{i}]: a server tool ({kind}) adds tokens and fees that cannot be "
                    "bounded before the call, so a partner with a budget cannot use it"
                )
