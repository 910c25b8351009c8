"""A Routstr node's ``GET /v1/models`` as arbstr prices (pure: the caller does the HTTP).

routstr-core (checked at 8bd7d7e) answers ``{"data": [model, ...]}`` with no ``"object"``; each model has
OpenRouter-style USD ``pricing`` and, when the node knows the BTC price, ``sats_pricing`` (else null) with the same
fields in sats: ``prompt``, ``completion``, ``input_cache_read``, ``input_cache_write`` are sats PER TOKEN (floats
such as 0.00042); ``request`` is the node's ``min_request_msat / 1000`` (the smallest reserve, not a fee it bills);
``max_prompt_cost``/``max_completion_cost``/``max_cost`` are sats, the maxima its 402 rule starts from. The node
bills tokens at ``prompt``/``completion``, so those two become arbstr's rates: int sats per 1M tokens, rounded UP
so arbstr never quotes a node cheaper than it charges; the rest becomes a ``NodeModelPrice`` (the reserve rule in
``schemas.routstr``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any, Optional

from schemas.routstr import NodeModelPrice

from .units import MAX_RATE, per_token_to_rate, to_decimal

log = logging.getLogger("arbstr.pricing.routstr")


@dataclass(frozen=True)
class ModelPrice:
    """One model a node serves: rates in int sats per 1M tokens; context_length when the node says it."""

    model: str
    input_rate: int
    output_rate: int
    context_length: Optional[int]
    node: Optional[NodeModelPrice] = field(default=None, compare=False)  # the node's own terms (its 402 rule)


def sats_per_token_to_rate(value: object) -> Optional[int]:
    """sats/token (a JSON number, or a numeric string as OpenRouter-style listings write them) → int sats per 1M
    tokens, rounded up (exact decimals: 0.000123 is 123, where floats would make it 124); None for anything
    negative, non-finite, absurd or not a number."""
    return per_token_to_rate(value)


def _positive_int(value: object) -> Optional[int]:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def _msat(value: object, per: Decimal = Decimal(1000)) -> int:
    """Sats (or sats per token, with ``per`` = 1e9 for msat per 1M tokens) as whole msat, rounded up; 0 when
    absent or unusable (a missing maximum only makes arbstr's reserve estimate smaller, never a rate)."""
    d = to_decimal(value)
    if d is None or d * per > MAX_RATE * 1000:
        return 0
    return int((d * per).to_integral_value(rounding=ROUND_CEILING))


def node_price(item: dict[str, Any], sats: dict[str, Any]) -> NodeModelPrice:
    top = item.get("top_provider") if isinstance(item.get("top_provider"), dict) else {}
    per_mtok = Decimal(1_000_000_000)
    return NodeModelPrice(
        prompt_msat_per_mtok=_msat(sats.get("prompt"), per_mtok),
        completion_msat_per_mtok=_msat(sats.get("completion"), per_mtok),
        cache_read_msat_per_mtok=_msat(sats.get("input_cache_read"), per_mtok),
        cache_write_msat_per_mtok=_msat(sats.get("input_cache_write"), per_mtok),
        min_request_msat=_msat(sats.get("request")), max_prompt_cost_msat=_msat(sats.get("max_prompt_cost")),
        max_completion_cost_msat=_msat(sats.get("max_completion_cost")), max_cost_msat=_msat(sats.get("max_cost")),
        context_length=_positive_int(top.get("context_length")) or _positive_int(item.get("context_length")),
        max_completion_tokens=_positive_int(top.get("max_completion_tokens")))


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
                           context_length=_context_length(item), node=node_price(item, sats))
        held = prices.get(model)
        if held is not None:
            # Listed twice: the dearer terms of each, so arbstr neither under-quotes nor under-reserves.
            node = price.node if held.node is None else held.node.model_copy(update={
                k: max(getattr(held.node, k), v) for k, v in price.node.model_dump().items()
                if isinstance(v, int) and k not in ("context_length", "max_completion_tokens")})
            price = ModelPrice(model=model, input_rate=max(held.input_rate, input_rate),
                               output_rate=max(held.output_rate, output_rate),
                               context_length=held.context_length or price.context_length, node=node)
        prices[model] = price
    return list(prices.values())


def unpriced_models(body: dict) -> list[str]:
    """Models a listing names without usable ``sats_pricing`` (null while the node lacks a BTC price): listed, with
    a note, never routed — arbstr does not guess a node's sats price from its USD one."""
    priced = {m.model for m in parse_models(body)}
    out = []
    for item in body.get("data", []) if isinstance(body, dict) else []:
        mid = item.get("id") if isinstance(item, dict) else None
        if isinstance(mid, str) and mid and len(mid) <= 256 and mid not in priced and mid not in out:
            out.append(mid)
    return out
