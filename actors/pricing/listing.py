"""A provider's ``GET {url}/models`` listing as plain data: the model ids it serves and, where the listing says
so, what each costs — Routstr-style ``sats_pricing`` (sats per token) first, else ``pricing`` in USD per token
converted at ``[market] sats_per_usd``. Pure: the body comes in, a :class:`Listing` or a
:class:`ListingError` comes out."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Optional

from schemas.pricing import ModelRate
from schemas.routstr import NodeModelPrice

from .units import per_token_to_rate

MAX_MODEL_ID = 256


class ListingError(ValueError):
    """The body is not a usable model listing (the last good one stays in force)."""


@dataclass(frozen=True)
class Listing:
    models: tuple[str, ...]
    rates: dict[str, ModelRate] = field(default_factory=dict)  # only the models the listing prices
    context: dict[str, int] = field(default_factory=dict)      # only the models that state one
    node: dict[str, NodeModelPrice] = field(default_factory=dict)  # Routstr nodes: their own terms, by model


def _pair(block: Any, scale: Decimal) -> Optional[ModelRate]:
    if not isinstance(block, dict):
        return None
    inp = per_token_to_rate(block.get("prompt"), scale)
    out = per_token_to_rate(block.get("completion"), scale)
    if inp is None or out is None:
        return None
    return ModelRate(input_rate=inp, output_rate=out)


def model_rate(item: dict[str, Any], sats_per_usd: Optional[int]) -> Optional[ModelRate]:
    """The price of one listed model in sats per 1M tokens (rounded up), or None if it publishes none usable."""
    rate = _pair(item.get("sats_pricing"), Decimal(1))
    if rate is None and sats_per_usd is not None:
        rate = _pair(item.get("pricing"), Decimal(sats_per_usd))
    return rate


def _context(item: dict[str, Any]) -> Optional[int]:
    for value in (item.get("context_length"), (item.get("top_provider") or {}).get("context_length")
                  if isinstance(item.get("top_provider"), dict) else None):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def parse_listing(body: Any, sats_per_usd: Optional[int] = None) -> Listing:
    """``{"data": [{"id": …, "sats_pricing"?: …, "pricing"?: …, "context_length"?: …}, …]}`` → a Listing.

    An empty listing is an error, not "serves nothing": a provider mid-deploy must not vanish from routing."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise ListingError("not an OpenAI model list (no \"data\" array)")
    models: list[str] = []
    seen: set[str] = set()
    rates: dict[str, ModelRate] = {}
    context: dict[str, int] = {}
    for item in data:
        if not isinstance(item, dict):
            continue
        mid = item.get("id")
        if not isinstance(mid, str) or not mid.strip() or len(mid) > MAX_MODEL_ID or mid in seen:
            continue
        seen.add(mid)
        models.append(mid)
        rate = model_rate(item, sats_per_usd)
        if rate is not None:
            rates[mid] = rate
        ctx = _context(item)
        if ctx is not None:
            context[mid] = ctx
    if not models:
        raise ListingError("the listing names no models")
    return Listing(models=tuple(models), rates=rates, context=context)
