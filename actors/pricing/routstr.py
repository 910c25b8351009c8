"""A Routstr node's ``GET /v1/models`` as arbstr prices (pure: the caller does the HTTP).

routstr-core answers ``{"data": [model, ...]}``; each model has OpenRouter-style USD ``pricing`` and, when the
node knows the BTC price, ``sats_pricing`` with the same fields in sats: ``prompt`` and ``completion`` are
sats PER TOKEN (floats such as 0.00042), ``request``/``image``/``web_search``/... are per item, ``max_cost``
is the most one request can cost, in sats. The node bills tokens at ``prompt``/``completion`` (plus a minimum
per request), so those two become arbstr's rates: int sats per 1M tokens, rounded UP so arbstr never
quotes a node cheaper than it charges.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

from .units import per_token_to_rate

log = logging.getLogger("arbstr.pricing.routstr")


@dataclass(frozen=True)
class ModelPrice:
    """One model a node serves: rates in int sats per 1M tokens; context_length when the node says it."""

    model: str
    input_rate: int
    output_rate: int
    context_length: Optional[int]


def sats_per_token_to_rate(value: object) -> Optional[int]:
    """sats/token (a JSON number, or a numeric string as OpenRouter-style listings write them) → int sats per 1M
    tokens, rounded up (exact decimals: 0.000123 is 123, where floats would make it 124); None for anything
    negative, non-finite, absurd or not a number."""
    return per_token_to_rate(value)


def _positive_int(value: object) -> Optional[int]:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def _context_length(item: dict[str, Any]) -> Optional[int]:
    top = item.get("top_provider")
    from_top = _positive_int(top.get("context_length")) if isinstance(top, dict) else None
    return _positive_int(item.get("context_length")) or from_top


def parse_models(body: dict) -> list[ModelPrice]:
    """Every model of a ``/v1/models`` body that has usable ``sats_pricing``, in listing order.

    Raises ValueError when the body is not a models listing at all (so the caller can tell a failed
    discovery from a node that prices nothing in sats); single bad entries are skipped. A model listed twice
    keeps the higher of each rate.
    """
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ValueError("not a /v1/models listing: expected an object with a 'data' list")
    prices: dict[str, ModelPrice] = {}
    for item in body["data"]:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            continue
        sats = item.get("sats_pricing")
        if not isinstance(sats, dict):
            continue
        input_rate = sats_per_token_to_rate(sats.get("prompt"))
        output_rate = sats_per_token_to_rate(sats.get("completion"))
        if input_rate is None or output_rate is None:
            log.debug("routstr model %s skipped: unusable sats_pricing", item["id"][:200])
            continue
        model = item["id"]
        price = ModelPrice(model=model, input_rate=input_rate, output_rate=output_rate,
                           context_length=_context_length(item))
        held = prices.get(model)
        if held is not None:
            price = ModelPrice(model=model, input_rate=max(held.input_rate, input_rate),
                               output_rate=max(held.output_rate, output_rate),
                               context_length=held.context_length or price.context_length)
        prices[model] = price
    return list(prices.values())
