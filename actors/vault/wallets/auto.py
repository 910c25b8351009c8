"""The auto rail: Cashu for small amounts, Lightning for large ones, behind the one Wallet interface.

The choice is by amount only (``choose_rail``, pure); the one fallback to the other rail after a definite
failure is the vault's decision (``Rails``), because it must be journaled before the second rail is called —
this wallet only names that rail (``fallback_rail``).
"""

from __future__ import annotations

import asyncio
from typing import Callable, Optional

from .base import DepositInvoice, OnSettled, PaymentStatus, PayoutPlan, Redeemed, Wallet, WalletError

LIGHTNING, CASHU = "lightning", "cashu"


def choose_rail(amount_msat: int, threshold_msat: int) -> str:
    """Cashu below the threshold (cheap, no routing fee floor), Lightning at or above it."""
    return CASHU if amount_msat < threshold_msat else LIGHTNING


def other_rail(rail: str) -> str:
    return CASHU if rail == LIGHTNING else LIGHTNING


class AutoWallet:
    kind = "auto"
    rails = (LIGHTNING, CASHU)

    def __init__(self, lightning: Wallet, cashu: Wallet) -> None:
        self.by_rail: dict[str, Wallet] = {LIGHTNING: lightning, CASHU: cashu}
        self.identity = "auto"

    @property
    def parts(self) -> tuple[Wallet, ...]:
        return tuple(self.by_rail.values())

    def _on(self, rail: str) -> Wallet:
        wallet: Optional[Wallet] = self.by_rail.get(rail)
        if wallet is None:
            raise WalletError(f"no {rail} rail", code="rail_unavailable")
        return wallet

    async def start(self) -> None:
        await asyncio.gather(*(w.start() for w in self.parts))
        self.identity = "auto:" + "+".join(w.identity for w in self.parts)

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.parts), return_exceptions=True)

    async def create_invoice(self, amount_msat: int, memo: str, expiry_s: int) -> DepositInvoice:
        return await self._on(LIGHTNING).create_invoice(amount_msat, memo, expiry_s)

    async def watch_invoices(self, after_settle_index: int, on_settled: OnSettled) -> None:
        # Deposit invoices come from the Lightning node only: one settle-index cursor, one feed.
        await self._on(LIGHTNING).watch_invoices(after_settle_index, on_settled)

    def token_id(self, token: str) -> str:
        return self._on(CASHU).token_id(token)

    async def redeem_token(self, token: str) -> Redeemed:
        return await self._on(CASHU).redeem_token(token)

    async def plan_payout(self, bolt11: str, rail: str) -> PayoutPlan:
        return await self._on(rail).plan_payout(bolt11, rail)

    async def plan_token_payout(self, payout_id: str, amount_msat: int) -> PayoutPlan:
        return await self._on(CASHU).plan_token_payout(payout_id, amount_msat)

    async def pay(self, plan: PayoutPlan) -> PaymentStatus:
        return await self._on(plan.rail).pay(plan)

    async def check_payout(self, plan: PayoutPlan) -> PaymentStatus:
        return await self._on(plan.rail).check_payout(plan)

    async def assets_msat(self) -> int:
        return sum(await asyncio.gather(*(w.assets_msat() for w in self.parts)))

    def on_rail(self, rail: str) -> Wallet:
        return self.by_rail[rail]

    def stores(self) -> tuple[Wallet, ...]:
        return self.parts  # each part reports its own assets: reconciliation shows them by rail

    def rail_for(self, amount_msat: int, has_invoice: bool, auto_threshold_msat: int) -> str:
        return choose_rail(amount_msat, auto_threshold_msat)

    def fallback_rail(self, rail: str) -> Optional[str]:
        return other_rail(rail)

    def back_with_journal(self, journal_net_msat: Callable[[], int]) -> None:
        return None  # its parts are the stores of value; they are never handed the journal's figure
