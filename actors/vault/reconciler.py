"""Reconciliation: the wallets' assets against the books' liabilities; a shortfall beyond the margin closes
the vault until an operator clears it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from schemas.errors import ArbstrError
from schemas.vault import (ClearFreeze, FreezeState, Reconciliation)

from .rails_core import RailsCore

log = logging.getLogger("arbstr.vault.rails")

def _now_ms() -> int:
    return int(time.time() * 1000)


class Reconciler(RailsCore):
    """Books against wallets, on demand and on the watchdog's timer."""

    async def holdings(self) -> dict[str, int]:
        """Assets by wallet identity (an auto wallet reports each of its rails)."""
        parts = self.wallet.stores()
        amounts = await asyncio.gather(*(w.assets_msat() for w in parts))
        return {w.identity: a for w, a in zip(parts, amounts)}

    async def _measure(self) -> tuple[int, dict[str, int]]:
        books = self.book.books(0)
        liabilities = books.balances_msat + books.pending_msat  # pending: holds and payouts
        try:
            wallets = await self.holdings()
        except Exception as e:
            raise ArbstrError(503, f"the wallet could not report its assets: {e!r}", code="wallet_unavailable") \
                from None
        return liabilities, wallets

    def _short(self, liabilities: int, assets: int) -> bool:
        """Short beyond the margin and beyond whatever shortfall an operator accepted when forcing a clear."""
        tolerated = self.cfg.reconcile_margin_msat + self.freeze.state.accepted_shortfall_msat
        return assets - liabilities + tolerated < 0

    async def reconcile(self) -> Reconciliation:
        """Compare the books with the wallets now; a shortfall beyond the margin closes the vault."""
        await self.catch_up()
        liabilities, wallets = await self._measure()
        if self._short(liabilities, sum(wallets.values())) and not self.freeze.state.frozen:
            # A payout the rail has paid but the journal has not recorded yet looks like missing money: settle
            # what the rails know, read again, and close only if the shortfall is still there.
            await self.resume_all()
            await self.catch_up()
            liabilities, wallets = await self._measure()
            assets = sum(wallets.values())
            if self._short(liabilities, assets):
                await self.freeze.set(FreezeState(
                    frozen=True, by="watchdog", at_ms=_now_ms(), shortfall_msat=liabilities - assets,
                    accepted_shortfall_msat=self.freeze.state.accepted_shortfall_msat,
                    reason=f"assets {assets} msat < liabilities {liabilities} msat beyond the margin "
                           f"{self.cfg.reconcile_margin_msat} msat"))
        assets = sum(wallets.values())
        surplus = assets - liabilities
        f = self.freeze.state
        return Reconciliation(liabilities_msat=liabilities, assets_msat=assets, surplus_msat=surplus,
                              margin_msat=self.cfg.reconcile_margin_msat,
                              ok=surplus + self.cfg.reconcile_margin_msat >= 0, wallets=wallets,
                              frozen=f.frozen, frozen_reason=f.reason, frozen_at_ms=f.at_ms)

    async def clear(self, req: ClearFreeze) -> Reconciliation:
        """The operator reopens the vault: refused while the books still fall short, unless forced (then that
        shortfall is accepted: only a larger one closes the vault again)."""
        rec = await self.reconcile()
        if not rec.ok and not req.force:
            raise ArbstrError(409, f"the shortfall persists ({-rec.surplus_msat} msat beyond what the wallets "
                                   "hold); fund the wallet, or clear with force", code="shortfall_persists")
        accepted = max(0, -rec.surplus_msat - self.cfg.reconcile_margin_msat)
        await self.freeze.set(FreezeState(frozen=False, by="admin", at_ms=_now_ms(), accepted_shortfall_msat=accepted,
                                          reason="cleared by an operator" + (
                                              f" (forced, accepting a shortfall of {accepted} msat)" if accepted
                                              else "")))
        return rec.model_copy(update={"frozen": False, "frozen_reason": "", "frozen_at_ms": 0})

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.reconcile_interval_s)
            try:
                rec = await self.reconcile()
                if not rec.ok:
                    log.error("reconciliation: shortfall of %d msat", -rec.surplus_msat)
            except Exception as e:
                log.warning("reconciliation watchdog: %r", e)
