"""Price table entries (KV ``arbstr_prices``, key = provider) and ``arbstr.v1.pricing.*`` messages."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from .common import Message, Msat, Rate, Tier
from .routstr import NodeModelPrice

# Where a price entry comes from: the operator's [[providers]], an endpoint a quote feed admitted, or a Routstr
# node announced on Nostr.
ProviderKind = Literal["configured", "feed", "routstr"]
# How arbstr pays a Routstr node: with the prepaid key the vault bought ("key"), or per request with an X-Cashu
# token from the vault ("x_cashu": non-streamed requests only, since the node then buffers the whole answer).
Payment = Literal["", "key", "x_cashu"]
# Where the gateway finds the key for a provider: its own [[providers]] api_key (possibly none), the
# [[market.credentials]] entry whose url is the entry's url, or the arbstr_provider_keys KV bucket.
CredentialSource = Literal["config", "market", "provider_keys"]


class ModelRate(Message):
    input_rate: Rate
    output_rate: Rate


class PriceSource(Message):
    """One source that contributed to an entry and when it last observed what it contributed."""

    name: str = Field(description="config | discovery | feed:<name> | nostr")
    observed_at_ms: int = 0


class HeldRate(Message):
    """A market price the guard keeps out of force: it moved more than ``[market] max_price_jump``."""

    input_rate: Rate
    output_rate: Rate
    previous_input_rate: Rate
    previous_output_rate: Rate
    source: str
    since_ms: int = Field(description="when it was first held")


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
    source: str = Field("config", description="the sources' names joined by '+'")
    updated_at_ms: int = 0
    kind: ProviderKind = "configured"
    url: Optional[str] = Field(None, description="base URL to call; set for market providers only (configured "
                                                 "ones are called at the gateway's own configured URL)")
    credential: CredentialSource = "config"
    sources: list[PriceSource] = Field(default_factory=list)
    routable: bool = Field(True, description="False: the router never chooses it; `reasons` says why")
    reasons: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="what an operator should know, routable or not")
    held: dict[str, HeldRate] = Field(default_factory=dict, description="per model: prices held by the guard")
    free: bool = False
    mints: list[str] = Field(default_factory=list, description="Routstr nodes: the Cashu mints they accept")
    payable: bool = Field(True, description="False: the vault cannot pay it (a Routstr node that accepts none of "
                                            "[market.nostr] accepted_mints): never top it up")
    payment: Payment = Field("", description="Routstr nodes: paid with the vault's prepaid key, or per request "
                                             "(X-Cashu, non-streamed requests only)")
    node_prices: dict[str, NodeModelPrice] = Field(default_factory=dict, description="Routstr nodes: the node's "
                                                   "own terms per model (what its 402 rule reserves)")

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


class ConfirmRequest(Message):
    """``arbstr.v1.pricing.confirm``: put a provider's held prices in force (all of them, or these models)."""

    provider: str
    models: Optional[list[str]] = None


class ConfirmReply(Message):
    provider: str
    confirmed: dict[str, ModelRate]
