from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.limits.pricing import PriceTable


def test_current_prices_per_million_tokens() -> None:
    t = PriceTable()
    assert t.cost("claude-opus-4-5", 1_000_000, 0) == pytest.approx(5.0)
    assert t.cost("claude-opus-4-8", 0, 1_000_000) == pytest.approx(25.0)
    assert t.cost("claude-sonnet-4-6", 1_000_000, 1_000_000) == pytest.approx(18.0)
    assert t.cost("claude-haiku-4-5-20251001", 2_000_000, 1_000_000) == pytest.approx(7.0)


def test_cache_and_batch_multipliers() -> None:
    t = PriceTable()
    # Sonnet: cache write 1.25 x $3, cache read 0.1 x $3
    assert t.cost("claude-sonnet-4-5", 0, 0, 0, 1_000_000) == pytest.approx(3.75)
    assert t.cost("claude-sonnet-4-5", 0, 0, 1_000_000, 0) == pytest.approx(0.3)
    assert t.cost("claude-haiku-4-5", 1_000_000, 1_000_000, batch=True) == pytest.approx(3.0)


def test_an_unknown_model_has_no_price_and_a_known_one_a_worst_case() -> None:
    # With no price a model's cost cannot be known: intake refuses it for a partner
    # with a USD budget (tests/unit/test_intake.py), so it can never bypass one.
    t = PriceTable()
    assert t.price("gpt-x") is None
    assert t.worst_case("claude-haiku-4-5", 1000, 1000) == pytest.approx(0.006)
    assert t.worst_case("claude-haiku-4-5", 1000, 1000, cache_ttls=["1h"]) == pytest.approx(0.007)


def test_overrides_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text('[models."claude-haiku-4-5"]\ninput = 2.0\noutput = 4.0\n')
    t = PriceTable.from_file(path)
    assert t.cost("claude-haiku-4-5", 1_000_000, 1_000_000) == pytest.approx(6.0)
    assert t.cost("claude-sonnet-4-6", 1_000_000, 0) == pytest.approx(3.0)
    path.write_text('[models."x"]\ninput = "lots"\n')
    with pytest.raises(ConfigError):
        PriceTable.from_file(path)


def test_one_hour_cache_writes_cost_twice_input_and_searches_cost_a_cent() -> None:
    prices = PriceTable()
    # 1M cache writes, 400k of them with the 1-hour TTL: 600k x 1.25 + 400k x 2.0 = $1.55
    assert prices.cost(
        "claude-haiku-4-5", 0, 0, 0, 1_000_000, cache_creation_1h_input_tokens=400_000
    ) == pytest.approx(1.55)
    assert prices.cost("claude-haiku-4-5", 0, 0, web_search_requests=3) == pytest.approx(0.03)
    # thinking is billed as output: it is part of output_tokens
    assert prices.cost("claude-sonnet-4-6", 0, 1_000_000) == pytest.approx(15.0)


def test_every_model_the_simulator_serves_has_the_price_it_bills() -> None:
    from pipeline.dev.sim.catalog import MODELS

    table = PriceTable()
    for model in MODELS:
        assert model.input_usd > 0
        for name in (model.id, *model.aliases):
            price = table.price(name)
            assert price is not None, name
            assert (price.input, price.output) == (model.input_usd, model.output_usd), name


def test_the_batch_discount_stacks_with_every_cache_tier_as_the_simulator_bills_it() -> None:
    # 1,000 plain input, 2,000 written for 5 minutes, 3,000 for an hour, 4,000 read
    # and 500 out, on Sonnet ($3 / $15): half of 3 + 7.5 + 18 + 1.2 + 7.5 thousandths.
    from pipeline.dev.sim.catalog import bill, find_model

    model = find_model("claude-sonnet-4-5")
    assert model is not None
    for batch in (False, True):
        ours = PriceTable().cost(
            "claude-sonnet-4-5", 1_000, 500, 4_000, 5_000,
            cache_creation_1h_input_tokens=3_000, batch=batch,
        )  # fmt: skip
        upstream = bill(model, input_tokens=1_000, output_tokens=500, cache_5m=2_000,
                        cache_1h=3_000, cache_read=4_000, batch=batch)  # fmt: skip
        assert ours == pytest.approx(upstream, abs=1e-12)
        assert ours == pytest.approx(0.0372 / (2 if batch else 1))
