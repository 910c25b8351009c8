"""Deposits: an agent's invoice or token, the operator's credit or token for an agent, and the credits of
invoices the rails saw settle (made at the owner of the account's partition).
"""

from __future__ import annotations

import logging

from actors.runtime.endpoints import RawReply
from schemas.exchanges import decode_error
from schemas.vault import AccountView, AgentDeposit, CreditDeposit, DepositCommand, DepositReply, DepositRequest, Empty

from . import decide
from .core import VaultCore
from .fold import view

log = logging.getLogger("arbstr.vault")

class DepositsApi(VaultCore):
    """Money coming in."""

    async def _my_deposit(self, req: DepositRequest, headers: dict[str, str], agent_id: str) -> DepositReply:
        return await self.rails.deposit(agent_id, req)

    async def _deposit(self, req: DepositCommand, headers: dict[str, str], agent_id: str) -> AccountView:
        await self._known(agent_id)
        return view((await self.execute(agent_id, lambda s, at: decide.deposit(
            s, req.deposit_id, req.amount_msat, req.rail, req.reference, at, self.book.deposited_msat()))).state)

    async def _deposit_token(self, req: AgentDeposit, headers: dict[str, str], agent_id: str) -> DepositReply:
        await self._known(agent_id)
        return await self.rails.deposit(agent_id, DepositRequest(token_hash="", rail="cashu", token=req.token))

    async def _credit(self, agent_id: str, deposit_id: str, amount_msat: int, rail: str, reference: str) -> None:
        """Credit a deposit the rails saw settle, at the owner of the agent's partition (here or forwarded)."""
        op = self._ops["credit"]
        reply = await self._routed(op)(CreditDeposit(agent_id=agent_id, deposit_id=deposit_id,
                                                     amount_msat=amount_msat, rail=rail, reference=reference), {})
        if isinstance(reply, RawReply):
            error = decode_error(reply.data, reply.headers)
            if error is not None:
                raise error

    async def _credit_here(self, req: CreditDeposit, headers: dict[str, str], agent_id: str) -> Empty:
        await self.execute(agent_id, lambda s, at: decide.deposit(s, req.deposit_id, req.amount_msat, req.rail,
                                                                  req.reference, at, None))
        return Empty()
