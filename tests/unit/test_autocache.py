"""A partner's automatic cache breakpoint: placed on a long stable prefix of a
request that placed none, left alone otherwise, and reserved at the write price."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.limits import autocache, tokens
from pipeline.limits.pricing import PriceTable
from tests.unit.test_intake import _intake, _record, _value

LONG = "policy " * 1_500  # ~1,500 tokens: worth a cache write
SHORT = "be brief"


def _params(**kw: Any) -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
        **kw,
    }


def test_a_long_system_prompt_gets_one_breakpoint_on_its_last_block() -> None:
    placed = autocache.with_breakpoint(_params(system=LONG))
    assert placed is not None
    assert placed["system"] == [
        {"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}
    ]
    blocks = [{"type": "text", "text": LONG}, {"type": "text", "text": "today"}]
    placed = autocache.with_breakpoint(_params(system=blocks))
    assert placed is not None
    assert [b.get("cache_control") for b in placed["system"]] == [None, {"type": "ephemeral"}]
    assert blocks[1] == {"type": "text", "text": "today"}  # the request's own is not changed
    assert tokens.cache_write_ttls(placed) == {"5m"}


def test_with_no_system_the_last_tool_carries_it() -> None:
    tools = [
        {"name": "a", "description": LONG, "input_schema": {"type": "object"}},
        {"name": "b", "description": "b", "input_schema": {"type": "object"}},
    ]
    placed = autocache.with_breakpoint(_params(tools=tools))
    assert placed is not None
    assert [t.get("cache_control") for t in placed["tools"]] == [None, {"type": "ephemeral"}]


@pytest.mark.parametrize(
    "params",
    [
        _params(system=SHORT),  # too short to be worth a write
        _params(),  # no stable prefix
        # the partner placed its own: its choice
        _params(system=LONG, cache_control={"type": "ephemeral", "ttl": "1h"}),
        _params(system=[{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]),
    ],
)
def test_no_breakpoint_is_placed_where_it_is_not_wanted(params: dict[str, Any]) -> None:
    assert autocache.with_breakpoint(params) is None


def test_intake_places_it_for_a_partner_that_opted_in_and_reserves_the_write_price() -> None:
    value = _value(system=LONG, max_tokens=16, model="claude-haiku-4-5")
    plain = _intake().admit(_record(value))
    cached = _intake(auto_cache=True).admit(_record(value))
    assert isinstance(plain.params["system"], str)
    assert cached.params["system"][-1]["cache_control"] == {"type": "ephemeral"}
    # the worst case: every input token at the 5-minute write price (1.25x)
    prices = PriceTable()
    upper = tokens.upper_bound_params(cached.params)
    assert cached.worst_usd == pytest.approx(
        prices.worst_case("claude-haiku-4-5", upper, 16, cache_ttls=["5m"])
    )
    assert cached.worst_usd > plain.worst_usd
