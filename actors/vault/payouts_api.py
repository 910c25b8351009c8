"""Payouts: an agent's withdrawals and their views, the operator's list of every payout, and paying Routstr
nodes from the operator account (per-request tokens, top-ups).
"""

from __future__ import annotations

import logging

from schemas.errors import ArbstrError
from schemas.payments import TopUpNow, TopUpResult, XCashuReport, XCashuRequest, XCashuResult, XCashuToken
from schemas.vault import AgentRef, PayoutList, PayoutRef, PayoutView, TokenRef, WithdrawRequest

from .core import VaultCore
from .xcashu import PerRequestPayments

log = logging.getLogger("arbstr.vault")

class PayoutsApi(VaultCore):
    """Money going out."""

    async def _my_withdraw(self, req: WithdrawRequest, headers: dict[str, str], agent_id: str) -> PayoutView:
        return await self.rails.withdraw(agent_id, req)

    async def _my_payout(self, req: PayoutRef, headers: dict[str, str], agent_id: str) -> PayoutView:
        return await self.rails.payout(agent_id, req.payout_id)

    async def _my_payouts(self, req: TokenRef, headers: dict[str, str]) -> PayoutList:
        return self.rails.payouts(await self._agent_for(req.token_hash))

    async def _payouts(self, req: AgentRef, headers: dict[str, str]) -> PayoutList:
        """Every payout (``agent_id`` "*": of every agent)."""
        if req.agent_id != "*":
            await self._known(req.agent_id)
        else:
            await self._caught_up()
        return self.rails.payouts(None if req.agent_id == "*" else req.agent_id)

    def _payments(self) -> PerRequestPayments:
        if self.x_cashu is None:
            raise ArbstrError(503, "this vault pays no providers ([vault.topup] is not configured)",
                              code="topup_unavailable")
        return self.x_cashu

    async def _x_cashu_token(self, req: XCashuRequest, headers: dict[str, str], operator: str) -> XCashuToken:
        self.freeze.check()
        return await self._payments().issue(req)

    async def _x_cashu_report(self, req: XCashuReport, headers: dict[str, str], operator: str) -> XCashuResult:
        return await self._payments().report(req)

    async def _top_up_now(self, req: TopUpNow, headers: dict[str, str], operator: str) -> TopUpResult:
        self.freeze.check()
        return await self._payments().topups.top_up_now(req)
