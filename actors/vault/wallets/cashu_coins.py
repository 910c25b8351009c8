"""Pure arithmetic of a Cashu wallet: sat/msat at the edge, input fees, which proofs to spend, change outputs.

The mint counts in whole sats; the vault counts in msat. Amounts cross that line here and nowhere else. A
mint charges ``input_fee_ppk`` (parts per thousand of a sat) per proof spent, rounded up over the whole
request, so spending fewer, larger proofs is cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from schemas.money import MSAT_PER_SAT, ceil_div

from .base import WalletError


def whole_sats(amount_msat: int, what: str = "amount") -> int:
    """Sats of an msat amount that must be whole: the mint cannot hold a fraction of a sat."""
    if not isinstance(amount_msat, int) or isinstance(amount_msat, bool) or amount_msat <= 0:
        raise WalletError(f"{what} must be a positive integer of msat", code="invalid_amount")
    if amount_msat % MSAT_PER_SAT:
        raise WalletError(f"{what} must be whole sats (a multiple of 1000 msat) on the cashu rail: "
                          f"{amount_msat} msat is not", code="invalid_amount")
    return amount_msat // MSAT_PER_SAT


def input_fee_sat(ppks: Sequence[int]) -> int:
    """The mint's fee for spending proofs whose keysets charge ``ppks``: rounded up over the request."""
    return ceil_div(sum(ppks), 1000)  # ppk: parts per thousand of a sat


@dataclass(frozen=True)
class Coin:
    """What selection needs to know about a proof (its index in the caller's list, amount, keyset fee)."""

    index: int
    amount: int
    ppk: int


def select_to_cover(coins: Sequence[Coin], need_sat: int) -> Optional[list[Coin]]:
    """Proofs worth at least ``need_sat`` plus the fee to spend them, few and large (fees are per proof).

    None when the coins cannot cover it. Largest first, then any proof the rest can do without is dropped
    (smallest first), so a payout does not spend a big proof and many small ones together.
    """
    if need_sat <= 0:
        return []
    chosen: list[Coin] = []
    total = 0
    for c in sorted(coins, key=lambda c: (-c.amount, c.index)):
        if total >= need_sat + input_fee_sat([x.ppk for x in chosen]):
            break
        chosen.append(c)
        total += c.amount
    if total < need_sat + input_fee_sat([x.ppk for x in chosen]):
        return None
    for c in sorted(chosen, key=lambda c: (c.amount, c.index)):
        rest = [x for x in chosen if x is not c]
        if sum(x.amount for x in rest) >= need_sat + input_fee_sat([x.ppk for x in rest]):
            chosen = rest
    return sorted(chosen, key=lambda c: c.index)


def exact_subset(coins: Sequence[Coin], amount_sat: int) -> Optional[list[Coin]]:
    """Proofs summing to exactly ``amount_sat``, found greedily (denominations are powers of two), or None.

    Handing these over as they are costs no swap and no fee.
    """
    chosen: list[Coin] = []
    remaining = amount_sat
    for c in sorted(coins, key=lambda c: (-c.amount, c.index)):
        if 0 < c.amount <= remaining:
            chosen.append(c)
            remaining -= c.amount
    return sorted(chosen, key=lambda c: c.index) if remaining == 0 and chosen else None


def blank_outputs(overpaid_sat: int) -> int:
    """How many blank outputs (NUT-08) let the mint return up to ``overpaid_sat`` as change.

    Change comes back split in powers of two, one per output: as many outputs as the amount has bits is
    always enough. Too few and the mint keeps the rest.
    """
    return max(1, overpaid_sat.bit_length()) if overpaid_sat > 0 else 0


def split_amount(amount_sat: int) -> list[int]:
    """An amount as the powers of two a mint signs (13 → [1, 4, 8])."""
    return [1 << i for i in range(amount_sat.bit_length()) if amount_sat >> i & 1]


def fee_estimate_sat(coins: Sequence[Coin], active_ppk: int, spare_proofs: int = 2) -> int:
    """The input fee of spending ``coins``, with room for ``spare_proofs`` more of the active keyset.

    A payout is planned before it is sent; the wallet's proofs may change in between (another payout, a
    deposit), and the fee the agent is held for must still cover the selection made at send time.
    """
    return input_fee_sat([c.ppk for c in coins] + [active_ppk] * spare_proofs)
