"""The spend path: reserving a hold (and waiting for its approval), growing it for a fallback, and settling
or releasing it.
"""

from __future__ import annotations

import asyncio
import logging

from schemas.errors import ArbstrError, request_id_reused
from schemas.vault import Empty, ExtendRequest, ReserveReply, ReserveRequest, SettleCommand

from . import clock, decide
from .core import VaultCore
from .fold import AccountState
from .routing import unauthorized
from .serving import Decider

log = logging.getLogger("arbstr.vault")

RESERVE_MAX_AGE_MS = 120_000  # a reserve sent longer ago is refused (NATS delivers buffered requests late)


class HoldsApi(VaultCore):
    """Reserve, extend, await approval, settle and release."""

    async def _reserve(self, req: ReserveRequest, headers: dict[str, str], agent_id: str) -> ReserveReply:
        self.freeze.check()
        if req.sent_at_ms is not None and clock.now_ms() - req.sent_at_ms > RESERVE_MAX_AGE_MS:
            raise ArbstrError(409, f"request {req.request_id} was sent too long ago to be held",
                              code="request_stale", headers={"x-should-retry": "false"})
        ttl_ms = self.vc.hold_ttl_s * 1000
        rid = req.request_id
        w = await self.execute(agent_id, lambda s, at: decide.reserve(
            s, rid, req.envelope, at, ttl_ms=ttl_ms, provider=req.provider, model=req.model, attempt=req.attempt),
            answer_with=lambda s, d: None if d.noop else self._hold_reply(agent_id, rid, s, req.attempt))
        if w.decided.noop == "duplicate" and not req.attempt:
            # A caller naming no attempt sends a reserve once: a second one with this id is another request reusing
            # it, and a hold shared by two upstream calls would let one of them go unpaid. (A repeat of a named
            # attempt is the same reserve delivered again: it is answered from its hold.)
            raise request_id_reused(rid)
        return w.answer if w.answer is not None else self._hold_reply(agent_id, rid, w.state, req.attempt)

    async def _extend(self, req: ExtendRequest, headers: dict[str, str], agent_id: str) -> ReserveReply:
        """A fallback to a costlier candidate: the hold grows first (one more journal write, only then)."""
        if self.book.agent_by_token(req.token_hash) != agent_id:
            raise unauthorized()
        self.freeze.check()
        rid = req.request_id
        w = await self.execute(agent_id, lambda s, at: decide.extend(s, rid, req.amount_msat, at, req.attempt),
                               answer_with=lambda s, d: self._hold_reply(agent_id, rid, s, s.holds[rid].attempt
                                                                         if rid in s.holds else ""))
        return w.answer

    async def _wait_approval(self, req: ReserveRequest, headers: dict[str, str], agent_id: str) -> ReserveReply:
        """The second half of a reserve that needs approval: answers when it is approved, denied or timed out."""
        state = self.book.state(agent_id)
        hold = state.holds.get(req.request_id)
        if hold is not None and hold.state == "awaiting_approval" and hold.attempt == req.attempt:
            state = await self._await_approval(agent_id, req.request_id, hold.approval_deadline_ms or clock.now_ms())
        return self._hold_reply(agent_id, req.request_id, state, req.attempt)

    def _hold_reply(self, agent_id: str, rid: str, state: AccountState, attempt: str = "") -> ReserveReply:
        hold = state.holds.get(rid)
        if hold is not None and hold.attempt != attempt:
            hold = None  # another attempt's hold: this one ended (and the rid was reserved again since)
        if hold is None:
            res = state.resolutions.get(rid)
            if res is not None and res.kind == "denied" and res.hold.attempt == attempt:
                code = "approval_timeout" if res.reason == decide.APPROVAL_TIMEOUT else "approval_denied"
                raise ArbstrError(403, f"the spend was not approved ({res.reason or 'denied'})", code=code,
                                  headers={"x-should-retry": "false"})
            raise ArbstrError(409, f"request {rid} was already resolved", code="request_resolved")
        return ReserveReply(request_id=rid, agent_id=agent_id, amount_msat=hold.amount_msat,
                            output_tokens=hold.output_tokens, expires_at_ms=hold.expires_at_ms,
                            balance_msat=state.available_msat, state=hold.state,
                            approval_deadline_ms=hold.approval_deadline_ms)

    async def _await_approval(self, agent_id: str, rid: str, deadline_ms: int) -> AccountState:
        """Hold the reply until a human approves or denies, or the deadline denies it for them."""
        key = (agent_id, rid)
        event = asyncio.Event()
        self._waiters.setdefault(key, set()).add(event)
        try:
            while True:
                state = self.book.state(agent_id)
                hold = state.holds.get(rid)
                if hold is None or hold.state != "awaiting_approval":
                    return state
                remaining = deadline_ms - clock.now_ms()
                if remaining <= 0:
                    await self.execute(agent_id, lambda s, at: decide.expire(s, rid, at, self.vc.expiry_action))
                    continue
                event.clear()
                try:
                    await asyncio.wait_for(event.wait(), remaining / 1000 + 0.01)
                except asyncio.TimeoutError:
                    pass
        finally:
            waiting = self._waiters.get(key)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiters[key]

    async def _settle_now(self, cmd: SettleCommand, headers: dict[str, str], agent_id: str) -> Empty:
        """A settle or release, journaled by the owner before it answers (the gateway's fast path)."""
        await self.apply_settle(cmd, agent_id)
        return Empty()

    async def apply_settle(self, cmd: SettleCommand, agent_id: str) -> None:
        if not self.book.state(agent_id).created:
            log.warning("%s of %s names no known agent; nothing to do", cmd.kind, cmd.request_id)
            return
        rid = cmd.request_id
        if cmd.kind == "settle":
            decider: Decider = lambda s, at: decide.settle(
                s, rid, cmd.cost_msat, at, input_tokens=cmd.input_tokens, output_tokens=cmd.output_tokens,
                provider=cmd.provider, model=cmd.model, estimated=cmd.estimated, attempt=cmd.attempt,
                provider_cost_msat=cmd.provider_cost_msat, cost_drift=cmd.cost_drift)
        else:
            decider = lambda s, at: decide.release(s, rid, cmd.reason or "released", at, attempt=cmd.attempt)
        await self.execute(agent_id, decider, record=cmd.record)
