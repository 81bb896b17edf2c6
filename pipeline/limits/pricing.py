"""One price table, one cost function.

Prices are US dollars per million tokens. Cache writes cost 1.25x input for the
5-minute TTL and 2x for the 1-hour TTL, cache reads 0.1x input; thinking is billed
as output (it is part of output_tokens); web search costs $10 per 1,000 searches;
the Batch API halves the token prices. A TOML file can
override or extend the table (`PIPELINE_PRICES_FILE`), e.g.::

    [models."claude-opus-4-8"]
    input = 5.0
    output = 25.0
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError

CACHE_WRITE_MULTIPLIER = 1.25  # 5-minute TTL
CACHE_WRITE_1H_MULTIPLIER = 2.0
CACHE_READ_MULTIPLIER = 0.10
BATCH_MULTIPLIER = 0.5
WEB_SEARCH_USD = 10.0 / 1000


@dataclass(frozen=True)
class Price:
    input: float  # $/MTok
    output: float  # $/MTok


#: Model families by id pattern, first match wins.
DEFAULT_PRICES: tuple[tuple[str, Price], ...] = (
    (r"^claude-opus-4-[5-9]", Price(5.0, 25.0)),  # Opus 4.5 and later
    (r"^claude-opus-4", Price(15.0, 75.0)),  # Opus 4.0 and 4.1
    (r"^claude-sonnet-4", Price(3.0, 15.0)),
    (r"^claude-haiku-4-5", Price(1.0, 5.0)),
    (r"^claude-3-5-haiku", Price(0.8, 4.0)),
)


class PriceTable:
    def __init__(
        self,
        patterns: tuple[tuple[str, Price], ...] = DEFAULT_PRICES,
        exact: Mapping[str, Price] | None = None,
    ) -> None:
        self._patterns = [(re.compile(p), price) for p, price in patterns]
        self._exact = dict(exact or {})

    @classmethod
    def from_file(cls, path: Path) -> PriceTable:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read price file {path}: {exc}") from exc
        exact: dict[str, Price] = {}
        for model, entry in data.get("models", {}).items():
            try:
                exact[model] = Price(float(entry["input"]), float(entry["output"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"{path}: models.{model} needs numeric input and output") from exc
        return cls(exact=exact)

    def price(self, model: str) -> Price | None:
        if model in self._exact:
            return self._exact[model]
        for pattern, price in self._patterns:
            if pattern.search(model):
                return price
        return None

    def cost(
        self,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cache_read_input_tokens: int = 0,
        cache_creation_input_tokens: int = 0,
        *,
        cache_creation_1h_input_tokens: int = 0,
        web_search_requests: int = 0,
        batch: bool = False,
    ) -> float:
        """Dollars for one call; an unknown model costs 0 (and is worth a warning upstream).

        `cache_creation_input_tokens` is every cache write; the part written with
        the 1-hour TTL (`cache_creation_1h_input_tokens`) costs 2x input, the rest 1.25x.
        """
        price = self.price(model)
        if price is None:
            return 0.0
        one_hour = min(cache_creation_1h_input_tokens, cache_creation_input_tokens)
        five_minutes = cache_creation_input_tokens - one_hour
        dollars = (
            input_tokens * price.input
            + output_tokens * price.output
            + five_minutes * price.input * CACHE_WRITE_MULTIPLIER
            + one_hour * price.input * CACHE_WRITE_1H_MULTIPLIER
            + cache_read_input_tokens * price.input * CACHE_READ_MULTIPLIER
        ) / 1_000_000
        if batch:
            dollars *= BATCH_MULTIPLIER
        return dollars + web_search_requests * WEB_SEARCH_USD

    def worst_case(
        self, model: str, input_tokens: int, max_tokens: int, *, cache_ttls: Iterable[str] = ()
    ) -> float:
        """The most a request can cost: every input token at its dearest (a cache
        write when the request has breakpoints), every output token used."""
        ttls = set(cache_ttls)
        multiplier = (
            CACHE_WRITE_1H_MULTIPLIER if "1h" in ttls else CACHE_WRITE_MULTIPLIER if ttls else 1.0
        )
        price = self.price(model)
        if price is None:
            return 0.0
        return (input_tokens * price.input * multiplier + max_tokens * price.output) / 1_000_000
