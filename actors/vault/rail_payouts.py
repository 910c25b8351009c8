"""Payout requests: choosing the rail, claiming the invoice vault-wide, planning with the wallet, journaling
the start, and the views of payouts.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Optional

from schemas.errors import ArbstrError
from schemas.vault import (PayoutList, PayoutView, WithdrawRequest)

from . import decide
from .fold import AccountState
from .payout_driver import plan_of
from .rails_core import RailsCore, wallet_error
from .wallets.base import PayoutPlan, WalletError, decode_bolt11

log = logging.getLogger("arbstr.vault.rails")

def payout_view(state: AccountState, payout_id: str) -> PayoutView:
    open_ = state.payouts.get(payout_id)
    done = state.payouts_done.get(payout_id)
    p = open_ if open_ is not None else (done.payout if done is not None else None)
    if p is None:
        raise ArbstrError(404, f"no payout {payout_id}", code="unknown_payout")
    if done is not None:
        status = "succeeded" if done.kind == "settled" else "failed"
    else:
        status = "pending" if p.approval_deadline_ms is None else "awaiting_approval"
    return PayoutView(payout_id=payout_id, agent_id=state.agent_id, rail=p.rail, status=status,
                      amount_msat=p.amount_msat, fee_limit_msat=p.fee_limit_msat,
                      fee_msat=done.fee_msat if done else 0, charged_msat=done.charged_msat if done else 0,
                      reference=p.reference, reason=done.reason if done else "", started_at_ms=p.started_at_ms,
                      balance_msat=state.available_msat, initial_rail=p.initial_rail or p.rail,
                      fallback=p.fallback)


class PayoutRequests(RailsCore):
    """A withdrawal from request to journaled payout, and what the agent sees of it."""

    def owner_of_payout(self, payout_id: str) -> Optional[str]:
        for state in self.book.agents():
            if payout_id in state.payouts or payout_id in state.payouts_done:
                return state.agent_id
        return None

    def _rail_for(self, req: WithdrawRequest, amount_msat: int) -> str:
        if req.rail is not None:
            rail = req.rail
        else:
            rail = self.wallet.rail_for(amount_msat, req.bolt11 is not None, self.cfg.auto_threshold_msat)
        if rail not in self.wallet.rails:
            raise ArbstrError(400, f"the {rail} rail is not configured", code="rail_unavailable", param="rail")
        return rail

    async def withdraw(self, agent_id: str, req: WithdrawRequest) -> PayoutView:
        self.freeze.check()
        try:
            if req.bolt11 is not None:
                payout_id, plan, owner = await self._plan_invoice(agent_id, req)
            else:
                payout_id, plan, owner = await self._plan_token(agent_id, req)
        except WalletError as e:
            raise wallet_error(e) from None
        resume = owner is not None
        if plan is not None:
            # The destination's own amount is what is held, policy-checked and paid: the caller names no number.
            # The freeze is checked again inside: planning may take seconds at a mint or a node.
            def start(s: AccountState, at: int) -> decide.Decided:
                self.freeze.check()
                return decide.start_payout(s, payout_id, plan.amount_msat, plan.fee_limit_msat, plan.rail,
                                           plan.reference, plan.destination, at, wallet=self.identity(plan.rail),
                                           payout_key=req.payout_id or "")
            w = await self.execute(agent_id, start)
            resume = bool(w.decided.noop)  # type: ignore[attr-defined]  # a concurrent retry journaled it first
        # A repeated request for a payout already journaled asks the rail first rather than sending blind.
        task = self.drive(agent_id, payout_id, resume=resume)
        try:
            await asyncio.wait_for(asyncio.shield(task), self.cfg.pay_wait_s)
        except asyncio.TimeoutError:
            pass
        except Exception as e:
            # Journaled and perhaps paid: the caller learns "pending", never an error that invites a new payout.
            log.warning("payout %s: its driver failed (%r); it stays pending", payout_id, e)
        return await self.payout(agent_id, payout_id)

    async def _claim_invoice(self, agent_id: str, payment_hash: str) -> None:
        """Make ``agent_id`` the one account that may pay this payment hash, vault-wide, before anything is
        journaled. Checking the journals of every agent and then writing is check-then-act: two agents posting one
        invoice at the same moment (on one instance or several) would both be charged. The KV create is atomic:
        exactly one of them owns the hash, for good (even if its payout is then refused), like a token's claim."""
        owner = self.owner_of_payout(payment_hash)  # payouts journaled before claims existed
        if owner is None:
            try:
                owner = await self.claims.claim(f"invoice:{payment_hash}", agent_id)
            except Exception as e:
                raise ArbstrError(503, f"the invoice could not be claimed now ({type(e).__name__}); try again",
                                  code="vault_unavailable", headers={"retry-after": "1"}) from None
        if owner != agent_id:
            raise ArbstrError(409, "that invoice is being paid by another account", code="payout_conflict",
                              param="bolt11", headers={"x-should-retry": "false"})

    async def _plan_invoice(self, agent_id: str, req: WithdrawRequest
                            ) -> tuple[str, Optional[PayoutPlan], Optional[str]]:
        assert req.bolt11 is not None
        payment_hash, amount, _ = decode_bolt11(req.bolt11)
        await self._claim_invoice(agent_id, payment_hash)
        # A repeat: the same invoice on the same rail under the same key is the same payout; anything else a 409.
        if decide.same_payout(self.book.state(agent_id), payment_hash, amount, req.rail,
                              req.payout_id or "") is not None:
            return payment_hash, None, agent_id
        rail = self._rail_for(req, amount)
        return payment_hash, await self.wallet.plan_payout(req.bolt11, rail), None

    async def _plan_token(self, agent_id: str, req: WithdrawRequest
                          ) -> tuple[str, Optional[PayoutPlan], Optional[str]]:
        if req.amount_msat is None:
            raise ArbstrError(400, "a withdrawal needs a bolt11, or amount_msat for a Cashu token",
                              code="invalid_value", param="bolt11")
        rail = self._rail_for(req.model_copy(update={"rail": req.rail or "cashu"}), req.amount_msat)
        if rail != "cashu":
            raise ArbstrError(400, "only the cashu rail pays out as a token; send a bolt11 for Lightning",
                              code="invalid_value", param="rail")
        # Token payouts are named by the agent's idempotency key (or a fresh one): a retried request finds its
        # payout, and the wallet keeps the token it issued under that name. The same key for another amount is a
        # 409, as a deposit id credited with another amount is.
        payout_id = f"tok:{agent_id}:{req.payout_id or os.urandom(12).hex()}"
        if decide.same_payout(self.book.state(agent_id), payout_id, req.amount_msat, rail,
                              req.payout_id or "") is not None:
            return payout_id, None, agent_id
        return payout_id, await self.wallet.plan_token_payout(payout_id, req.amount_msat), None

    async def payout(self, agent_id: str, payout_id: str) -> PayoutView:
        """The agent's view of one payout; a token payout shows its token (asked of the wallet, never journaled)."""
        state = self.book.state(agent_id)
        view = payout_view(state, payout_id)
        if view.rail == "cashu" and view.status == "succeeded" and payout_id.startswith("tok:"):
            done = state.payouts_done[payout_id]
            try:
                status = await self.wallet.check_payout(plan_of(done.payout))
                view = view.model_copy(update={"token": status.token})
            except Exception as e:
                log.warning("payout %s: the wallet could not show its token (%r)", payout_id, e)
        return view

    def payouts(self, agent_id: Optional[str] = None, open_only: bool = False) -> PayoutList:
        out: list[PayoutView] = []
        for state in self.book.agents():
            if agent_id is not None and state.agent_id != agent_id:
                continue
            ids = list(state.payouts) + ([] if open_only else list(state.payouts_done))
            out.extend(payout_view(state, pid) for pid in ids)
        out.sort(key=lambda p: p.started_at_ms)
        return PayoutList(payouts=out)

    def identity(self, rail: str) -> str:
        """The wallet that pays on ``rail`` here (a node's pubkey, a mint + wallet store)."""
        return self.wallet.on_rail(rail).identity
