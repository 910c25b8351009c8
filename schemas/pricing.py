"""Price table entries (KV ``arbstr_prices``, key = provider) and ``arbstr.v1.pricing.*`` messages."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from .common import Message, Msat, Rate, Tier


class ModelRate(Message):
    input_rate: Rate
    output_rate: Rate


class ProviderPrices(Message):
    provider: str
    tier: Tier
    models: list[str]
    input_rate: Rate
    output_rate: Rate
    base_fee_msat: Msat = 0
    model_rates: dict[str, ModelRate] = Field(default_factory=dict, description="per-model overrides")
    context_length: int = 128_000
    supports_tools: bool = True
    source: str = "config"
    updated_at_ms: int = 0

    def rates_for(self, model: str) -> ModelRate:
        return self.model_rates.get(model) or ModelRate(input_rate=self.input_rate, output_rate=self.output_rate)


class PriceTable(Message):
    providers: list[ProviderPrices]


class QuoteRequest(Message):
    model: Optional[str] = None
    provider: Optional[str] = None
    input_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)


class Quote(Message):
    provider: str
    model: str
    tier: Tier
    input_rate: Rate
    output_rate: Rate
    base_fee_msat: Msat
    cost_msat: Msat


class QuoteReply(Message):
    quotes: list[Quote]


class TableRequest(Message):
    """Request of ``arbstr.v1.pricing.table``: no fields, the whole table comes back."""
