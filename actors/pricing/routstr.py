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
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Optional

log = logging.getLogger("arbstr.pricing.routstr")

TOKENS_PER_RATE_UNIT = 1_000_000


@dataclass(frozen=True)
class ModelPrice:
    """One model a node serves: rates in int sats per 1M tokens; context_length when the node says it."""

    model: str
    input_rate: int
    output_rate: int
    context_length: Optional[int]


def sats_per_token_to_rate(value: object) -> Optional[int]:
    """sats/token (a JSON number, or a numeric string as OpenRouter-style listings write them) → int sats
    per 1M tokens, rounded up; None for anything negative, non-finite or not a number.

    Decimal over the number's shortest text, not float arithmetic: 0.000123 sats/token is exactly 123 sats/1M,
    but 0.000123 * 1e6 in floats is 123.00000000000001, which would round up to 124.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        amount = Decimal(str(value).strip())
        if not amount.is_finite() or amount < 0:
            return None
        return math.ceil(amount * TOKENS_PER_RATE_UNIT)
    except ArithmeticError:  # InvalidOperation (not a number), Overflow (an absurd exponent)
        return None


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
