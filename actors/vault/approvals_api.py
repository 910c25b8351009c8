"""Approvals: what waits for a human (holds over a policy's limit, payouts), finding whose request an id names,
and deciding it.
"""

from __future__ import annotations

import logging
from typing import Optional

from schemas.errors import ArbstrError
from schemas.vault import Approval, ApprovalAction, ApprovalList, ApprovalResult, Empty

from . import decide
from .core import VaultCore
from .fold import AccountState

log = logging.getLogger("arbstr.vault")

class ApprovalsApi(VaultCore):
    """The operator's approvals queue and decisions."""

    async def _approvals(self, req: Empty, headers: dict[str, str]) -> ApprovalList:
        await self._caught_up()
        items = []
        for state in self.book.agents():
            for hold in state.holds.values():
                if hold.state == "awaiting_approval":
                    items.append(Approval(request_id=hold.rid, agent_id=state.agent_id, agent_name=state.name,
                                          amount_msat=hold.amount_msat, provider=hold.provider, model=hold.model,
                                          requested_at_ms=hold.reserved_at_ms,
                                          deadline_ms=hold.approval_deadline_ms or 0))
            for p in state.payouts.values():
                if p.approval_deadline_ms is not None:
                    items.append(Approval(request_id=p.payout_id, kind="payout", agent_id=state.agent_id,
                                          agent_name=state.name, amount_msat=p.held_msat, provider=p.rail,
                                          model="withdrawal", requested_at_ms=p.started_at_ms,
                                          deadline_ms=p.approval_deadline_ms))
        items.sort(key=lambda a: a.requested_at_ms)
        return ApprovalList(approvals=items)

    async def _holder(self, rid: str, agent_id: Optional[str]) -> tuple[str, bool]:
        """(agent id, whether it is a payout) of the approval ``rid`` names.

        Request ids are the clients' and collide across agents: with ``agent_id`` the approval is that agent's;
        without it, only a single pending approval with that id is ever chosen — several pending (or several
        agents knowing the id and none pending) is a 400 asking for the agent, never a guess."""
        await self._caught_up()
        if agent_id is not None:
            state = self.book.state(agent_id)
            if not state.created:
                raise ArbstrError(404, f"no agent {agent_id}", code="agent_not_found", param="agent_id")
            found = _approval_of(state, rid)
            if found is None:
                raise ArbstrError(404, f"agent {agent_id} has no reservation {rid}", code="unknown_request",
                                  param="request_id")
            return agent_id, found[1]
        pending: list[tuple[str, bool]] = []
        known: list[tuple[str, bool]] = []
        for state in self.book.agents():
            found = _approval_of(state, rid)
            if found is not None:
                (pending if found[0] else known).append((state.agent_id, found[1]))
        if len(pending) == 1:
            return pending[0]
        if len(pending) > 1 or (not pending and len(known) > 1):
            agents = ", ".join(sorted(a for a, _ in pending or known))
            raise ArbstrError(400, f"request id {rid} names requests of several agents ({agents}): decide it at "
                                   f"/v1/admin/approvals/{{agent_id}}/{rid}/approve|deny", code="agent_id_required",
                              param="agent_id")
        if known:
            return known[0]  # decided already, or never awaiting approval: the deciders say which (409)
        raise ArbstrError(404, f"no reservation {rid}", code="unknown_request", param="request_id")

    async def _decide_payout(self, agent_id: str, pid: str, approve: bool, reason: str) -> ApprovalResult:
        state = self.book.state(agent_id)
        payout = state.payouts.get(pid)
        if payout is None or payout.approval_deadline_ms is None:
            done = state.payouts_done.get(pid)
            if f"payout_approved:{pid}" in state.op_ids:
                raise decide.already_decided(pid, "approved")
            if done is not None and done.payout.approval_deadline_ms is not None:
                raise decide.already_decided(pid, "denied")
            raise ArbstrError(409, f"payout {pid} is not waiting for approval", code="not_awaiting_approval")
        if approve:
            await self.execute(agent_id, lambda s, at: decide.approve_payout(s, pid, at))
            self.rails.drive(agent_id, pid, resume=False)  # sent now; its outcome shows in the payout view
        else:
            await self.execute(agent_id, lambda s, at: decide.fail_payout(
                s, pid, f"denied by an operator{': ' + reason if reason else ''}", at))
        return ApprovalResult(request_id=pid, agent_id=agent_id, state="approved" if approve else "denied")

    async def _decide_approval(self, req: ApprovalAction, agent_id: str, approve: bool) -> ApprovalResult:
        rid = req.request_id
        found = _approval_of(self.book.state(agent_id), rid)
        if found is not None and found[1]:
            return await self._decide_payout(agent_id, rid, approve, req.reason)
        if approve:
            w = await self.execute(agent_id, lambda s, at: decide.approve(s, rid, at))
        else:
            w = await self.execute(agent_id, lambda s, at: decide.deny(s, rid, req.reason, at))
        if w.decided.noop == "duplicate":
            raise decide.already_decided(rid, "approved" if approve else "denied")  # by someone else, before
        hold = w.state.holds.get(rid)
        res = w.state.resolutions.get(rid)
        status = hold.state if hold is not None else (res.kind if res is not None else "unknown")
        return ApprovalResult(request_id=rid, agent_id=agent_id, state=status)

    async def _approve(self, req: ApprovalAction, headers: dict[str, str], agent_id: str) -> ApprovalResult:
        return await self._decide_approval(req, agent_id, True)

    async def _deny(self, req: ApprovalAction, headers: dict[str, str], agent_id: str) -> ApprovalResult:
        return await self._decide_approval(req, agent_id, False)


def _approval_of(state: AccountState, rid: str) -> Optional[tuple[bool, bool]]:
    """(pending, is a payout) of what ``rid`` names in one account — a pending one first — or None."""
    hold = state.holds.get(rid)
    payout = state.payouts.get(rid)
    if hold is not None and hold.state == "awaiting_approval":
        return True, False
    if payout is not None and payout.approval_deadline_ms is not None:
        return True, True
    if hold is not None or rid in state.resolutions:
        return False, False
    if payout is not None or rid in state.payouts_done:
        return False, True
    return None
