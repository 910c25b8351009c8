"""The pure price table: built from config, quoted cheapest first."""

from __future__ import annotations

from actors.pricing.table import prices_from_config, quote
from schemas.config import Config, ProviderConfig
from schemas.money import cost_msat
from schemas.pricing import ModelRate, ProviderPrices, QuoteRequest


def _provider(name: str, models: list[str], inp: int, out: int, fee: int = 0, **kw: object) -> ProviderConfig:
    return ProviderConfig(name=name, url=f"http://{name}.test/v1", models=models, input_rate=inp, output_rate=out,
                          base_fee_msat=fee, **kw)


CONFIG = Config(providers=[
    _provider("alpha", ["gpt-4o", "gpt-4o-mini"], 2500, 10000, fee=5, tier="frontier", context_length=64_000),
    _provider("beta", ["gpt-4o"], 2000, 8000, supports_tools=False),
    _provider("gamma", ["llama3"], 0, 0, tier="local"),
    _provider("delta", [], 1, 1),
])


def test_prices_from_config_copies_every_field() -> None:
    prices = prices_from_config(CONFIG, now_ms=1234)
    assert [p.provider for p in prices] == ["alpha", "beta", "gamma", "delta"]
    alpha = prices[0]
    assert alpha.models == ["gpt-4o", "gpt-4o-mini"]
    assert (alpha.input_rate, alpha.output_rate, alpha.base_fee_msat) == (2500, 10000, 5)
    assert alpha.tier == "frontier" and alpha.context_length == 64_000 and alpha.supports_tools
    assert alpha.source == "config" and alpha.updated_at_ms == 1234
    assert prices[1].supports_tools is False and prices[1].tier == "standard"
    assert prices[2].tier == "local" and prices[2].input_rate == 0
    assert prices[3].models == []


def test_prices_from_empty_config() -> None:
    assert prices_from_config(Config(), now_ms=0) == []


def test_quote_for_a_model_is_cheapest_first_with_exact_costs() -> None:
    prices = prices_from_config(CONFIG, now_ms=0)
    quotes = quote(prices, QuoteRequest(model="gpt-4o", input_tokens=1000, output_tokens=500))
    assert [q.provider for q in quotes] == ["beta", "alpha"]
    assert quotes[0].cost_msat == cost_msat(1000, 500, 2000, 8000, 0) == 6000
    assert quotes[1].cost_msat == cost_msat(1000, 500, 2500, 10000, 5) == 7505
    assert all(q.model == "gpt-4o" for q in quotes)
    assert quotes[1].tier == "frontier" and quotes[1].base_fee_msat == 5


def test_quote_unknown_model_and_empty_model_list_match_nothing() -> None:
    prices = prices_from_config(CONFIG, now_ms=0)
    assert quote(prices, QuoteRequest(model="no-such-model", input_tokens=10)) == []
    # delta serves no model at all: it appears in no quote, whatever is asked.
    assert all(q.provider != "delta" for q in quote(prices, QuoteRequest(input_tokens=10)))


def test_quote_filters_by_provider() -> None:
    prices = prices_from_config(CONFIG, now_ms=0)
    quotes = quote(prices, QuoteRequest(model="gpt-4o", provider="alpha", input_tokens=1))
    assert [(q.provider, q.model) for q in quotes] == [("alpha", "gpt-4o")]
    assert quote(prices, QuoteRequest(model="llama3", provider="alpha")) == []


def test_quote_without_model_lists_every_served_pair() -> None:
    prices = prices_from_config(CONFIG, now_ms=0)
    quotes = quote(prices, QuoteRequest(input_tokens=100, output_tokens=100))
    assert [(q.provider, q.model) for q in quotes] == [
        ("gamma", "llama3"), ("beta", "gpt-4o"), ("alpha", "gpt-4o"), ("alpha", "gpt-4o-mini")]
    assert quotes[0].cost_msat == 0


def test_quote_ties_are_broken_by_provider_name() -> None:
    same = dict(tier="standard", models=["m"], input_rate=100, output_rate=100)
    prices = [ProviderPrices(provider=n, **same) for n in ("zeta", "eta", "beta")]  # type: ignore[arg-type]
    quotes = quote(prices, QuoteRequest(model="m", input_tokens=7, output_tokens=3))
    assert [q.provider for q in quotes] == ["beta", "eta", "zeta"]
    assert len({q.cost_msat for q in quotes}) == 1


def test_quote_uses_per_model_rates() -> None:
    p = ProviderPrices(provider="p", tier="standard", models=["cheap", "dear"], input_rate=1000, output_rate=1000,
                       model_rates={"cheap": ModelRate(input_rate=10, output_rate=20)})
    by_model = {q.model: q for q in quote([p], QuoteRequest(input_tokens=1_000_000, output_tokens=1_000_000))}
    assert by_model["cheap"].cost_msat == 30_000 and by_model["cheap"].input_rate == 10
    assert by_model["dear"].cost_msat == 2_000_000


def test_quote_rounds_up_to_the_millisat() -> None:
    p = ProviderPrices(provider="p", tier="standard", models=["m"], input_rate=1, output_rate=0)
    # 1 token at 1 sat per 1M tokens is 0.001 msat: charged as 1 msat, never 0.
    assert quote([p], QuoteRequest(model="m", input_tokens=1))[0].cost_msat == 1
