"""Millisat arithmetic and the cost formula: the one piece of logic every part computes identically.

All amounts are ``int`` millisats. Rates are ``int`` sats per 1M tokens. No floats ever touch money.
"""

from __future__ import annotations

MSAT_PER_SAT = 1000
TOKENS_PER_RATE_UNIT = 1_000_000
# All the bitcoin there will ever be (21M BTC × 1e8 sat × 1e3), in msat: no account, and no vault, can hold more.
# Bounding deposits by it keeps every counter far below 2^63 (DuckDB BIGINT, JSON encoders' 64-bit integers).
MAX_MSAT = 2_100_000_000_000_000_000


def ceil_div(numerator: int, denominator: int) -> int:
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    if numerator < 0:
        raise ValueError("numerator must be non-negative")
    return -(-numerator // denominator)


def sats_to_msat(sats: int) -> int:
    return sats * MSAT_PER_SAT


def cost_msat(
    input_tokens: int,
    output_tokens: int,
    input_rate: int,
    output_rate: int,
    base_fee_msat: int = 0,
) -> int:
    """ceil((in·in_rate + out·out_rate) · 1000 / 1e6) + base_fee_msat, in exact integers."""
    for name, value in (
        ("input_tokens", input_tokens),
        ("output_tokens", output_tokens),
        ("input_rate", input_rate),
        ("output_rate", output_rate),
        ("base_fee_msat", base_fee_msat),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    weighted = input_tokens * input_rate + output_tokens * output_rate
    return ceil_div(weighted * MSAT_PER_SAT, TOKENS_PER_RATE_UNIT) + base_fee_msat


def max_output_tokens_for(budget_msat: int, input_tokens: int, input_rate: int, output_rate: int,
                          base_fee_msat: int = 0) -> int:
    """The largest output token count whose cost stays within ``budget_msat`` (0 if none fits)."""
    fixed = cost_msat(input_tokens, 0, input_rate, 0, base_fee_msat)
    if budget_msat < fixed:
        return 0
    if output_rate == 0:
        return 2**62
    # cost(out) <= budget  <=>  ceil((w_in + out*r)*1000/1e6) <= budget - fee
    #                       <=>  (w_in + out*r)*1000 <= (budget - fee)*1e6
    room = (budget_msat - base_fee_msat) * TOKENS_PER_RATE_UNIT // MSAT_PER_SAT - input_tokens * input_rate
    return max(0, room // output_rate)
