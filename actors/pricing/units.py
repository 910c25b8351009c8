"""Prices as market listings write them (decimal strings or floats, per token or per 1M tokens) turned into the
integer sats per 1M tokens arbstr rates are. Exact decimal arithmetic, always rounded up: a rate that is a hair
low would bill agents less than the provider charges, every request."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any, Optional

MILLION = Decimal(1_000_000)
# Above this a number is a unit mistake, not a price (21M BTC in sats per 1M tokens would be 2.1e15).
MAX_RATE = 10**15


def to_decimal(value: Any) -> Optional[Decimal]:
    """A finite, non-negative decimal from a JSON number or numeric string; None for anything else.

    Floats go through ``str`` so 0.07 stays 0.07 (``Decimal(0.07)`` is 0.07000000000000000666…)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    if not d.is_finite() or d < 0 or d.adjusted() > 30:
        return None  # 1e999999 would overflow the arithmetic below, or take seconds to turn into an int
    return d


def ceil_rate(value: Decimal) -> Optional[int]:
    """Round a rate up to whole sats per 1M tokens; None when it is absurdly large."""
    if value > MAX_RATE:
        return None
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def per_token_to_rate(value: Any, sats_per_unit: Decimal = Decimal(1)) -> Optional[int]:
    """A price per token (in sats, or in a currency worth ``sats_per_unit`` sats) → sats per 1M tokens."""
    d = to_decimal(value)
    return None if d is None else ceil_rate(d * sats_per_unit * MILLION)


def per_million_to_rate(value: Any) -> Optional[int]:
    """A price already in sats per 1M tokens (perhaps fractional) → whole sats per 1M tokens."""
    d = to_decimal(value)
    return None if d is None else ceil_rate(d)
