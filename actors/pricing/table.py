"""The price table as plain data: built from the config, quoted without any I/O."""

from __future__ import annotations

from schemas.config import Config, ProviderConfig
from schemas.money import cost_msat
from schemas.pricing import ProviderPrices, Quote, QuoteRequest


def provider_prices(provider: ProviderConfig, now_ms: int) -> ProviderPrices:
    return ProviderPrices(
        provider=provider.name,
        tier=provider.tier,
        models=list(provider.models),
        input_rate=provider.input_rate,
        output_rate=provider.output_rate,
        base_fee_msat=provider.base_fee_msat,
        context_length=provider.context_length,
        supports_tools=provider.supports_tools,
        source="config",
        updated_at_ms=now_ms,
    )


def prices_from_config(config: Config, now_ms: int) -> list[ProviderPrices]:
    """One entry per configured provider, in config order."""
    return [provider_prices(p, now_ms) for p in config.providers]


def quote(prices: list[ProviderPrices], req: QuoteRequest) -> list[Quote]:
    """Cost of ``req``'s token counts at every matching (provider, model), cheapest first.

    Entries the router may not choose are not quoted. Without a model every model a provider serves is quoted;
    ties go to the provider name (then the model name) so two pricing instances always answer the same list.
    """
    quotes: list[Quote] = []
    for p in prices:
        if not p.routable or (req.provider is not None and p.provider != req.provider):
            continue
        models = [req.model] if req.model is not None else list(dict.fromkeys(p.models))
        for model in models:
            if model not in p.models:
                continue
            rates = p.rates_for(model)
            quotes.append(Quote(
                provider=p.provider,
                model=model,
                tier=p.tier,
                input_rate=rates.input_rate,
                output_rate=rates.output_rate,
                base_fee_msat=p.base_fee_msat,
                cost_msat=cost_msat(req.input_tokens, req.output_tokens, rates.input_rate, rates.output_rate,
                                    p.base_fee_msat),
            ))
    quotes.sort(key=lambda q: (q.cost_msat, q.provider, q.model))
    return quotes
