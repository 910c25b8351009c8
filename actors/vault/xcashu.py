"""Per-request payment of Routstr nodes (the ``X-Cashu`` header): the vault's side.

The gateway asks for a token for one request (``issue``): it is a token payout of the operator account, journaled
before the wallet makes it, named by the agent's request so a retried ask gets the same token. The gateway sends
it to the node and hands back what came of it (``report``): the node's change (the ``X-Cashu`` response header, or
a refund on an upstream failure) is redeemed into the vault's wallet and credited to the operator account, in the
same journal command that closes the payment; a token the node never took is taken back the same way.

Nothing depends on the report arriving: every instance looks, under a lease, at payments older than
``x_cashu_grace_s`` that are still open (``recover_once``). NUT-07 tells whether the token was spent: unspent, it is
taken back; spent, the node is asked for its change again (``POST /v1/balance/refund`` with the token), waited
for while the node says 425, and the payment closed as spent or lost when the node says so or after
``x_cashu_give_up_s``. Credits are idempotent by the change token's id, the close by the payout id: across
crashes and vault instances, each sat comes back once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Optional

from actors.runtime.tasks import cancel_and_wait
from schemas.errors import ArbstrError
from schemas.payments import XCashuReport, XCashuRequest, XCashuResult, XCashuToken
from schemas.vault import WithdrawRequest

from . import decide
from .claims import Claims
from .node_client import NodeUnreachable
from .topup import TopUps
from .wallets.base import Wallet, WalletError
from .xcashu_plan import is_payment, payment_id, payout_id, provider_of, refund_action, token_msat

log = logging.getLogger("arbstr.vault.xcashu")

LEASE_S = 30.0
# Change worth no more than the mint's input fee cannot be redeemed: the node kept what it was worth, in effect.
DUST = "token_too_small"
DUST_REASON = "the change is worth less than the mint's fee to redeem it"


class PerRequestPayments:
    def __init__(self, topups: TopUps, claims: Claims, catch_up: Any) -> None:
        self.topups = topups
        self.cfg = topups.cfg
        self.rails = topups.rails
        self.book = topups.book
        self.execute = topups.execute
        self.claims = claims
        self.catch_up = catch_up
        self._task: Optional[asyncio.Task[None]] = None

    @property
    def operator(self) -> str:
        return self.cfg.operator_agent

    async def start(self) -> None:
        self._task = asyncio.create_task(self._forever())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    # --- the gateway's two calls ---------------------------------------------------------------------------
    async def issue(self, req: XCashuRequest) -> XCashuToken:
        if not self.cfg.x_cashu:
            raise ArbstrError(403, "per-request payment is off ([vault.topup] x_cashu)", code="x_cashu_off")
        amount = token_msat(req.amount_msat)
        if amount > self.cfg.x_cashu_max_msat:
            raise ArbstrError(400, f"a per-request token is at most {self.cfg.x_cashu_max_msat} msat",
                              code="invalid_amount", param="amount_msat")
        entry = await self.topups.entry(req.provider)
        if entry is None or not self.topups.eligible(entry) or entry.payment != "x_cashu":
            raise ArbstrError(409, f"{req.provider} is not a node paid per request", code="not_x_cashu")
        # A gateway credential alone cannot draw tokens: each pays for a request an agent holds money for.
        if req.request_id not in self.book.state(req.agent_id).holds:
            await self.catch_up()
            if req.request_id not in self.book.state(req.agent_id).holds:
                raise ArbstrError(409, "no open hold for that request", code="no_hold")
        pid = payment_id(req.agent_id, req.request_id, req.provider)
        view = await self.rails.withdraw(self.operator, WithdrawRequest(
            token_hash="", rail="cashu", amount_msat=amount, payout_id=pid))
        if view.status != "succeeded" or not view.token:
            raise ArbstrError(503, f"the token could not be made now ({view.status})", code="token_unavailable",
                              headers={"retry-after": "1"})
        if decide.provider_payment_closed(self.book.state(self.operator), view.payout_id):
            raise ArbstrError(409, "that request's payment was already settled", code="payment_closed")
        return XCashuToken(payment_id=pid, token=view.token, amount_msat=amount)

    async def report(self, rep: XCashuReport) -> XCashuResult:
        pid = payout_id(self.operator, rep.payment_id)
        done = self.book.state(self.operator).payouts_done.get(pid)
        if done is None or done.kind != "settled" or provider_of(rep.payment_id) is None:
            raise ArbstrError(404, "no such per-request payment", code="unknown_payment")
        if rep.change is not None:
            try:
                return await self._take(rep.change, pid, "change")
            except WalletError as e:  # unusable change: the node will be asked for it again
                if e.code == DUST:
                    return await self._close(pid, "spent", DUST_REASON)
                log.warning("payment %s: the change handed back was refused (%s)", rep.payment_id, e.code)
        elif rep.outcome == "answered":
            return await self._close(pid, "spent", "the node answered and returned no change")
        elif rep.outcome in ("refused", "unsent"):
            # The node answered with an error and no token (or never saw one): take ours back if it is unspent.
            try:
                return await self._take((await self.rails.payout(self.operator, pid)).token, pid, "reclaimed")
            except WalletError as e:
                log.info("payment %s: not taken back now (%s); recovered later", rep.payment_id, e.code)
        return self._result(pid)

    # --- recovery ------------------------------------------------------------------------------------------
    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(min(self.cfg.interval_s, self.cfg.x_cashu_grace_s))
            if not self.topups.owns(self.operator):
                continue  # recovered where the operator account's partition is served
            try:
                await self.recover_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("per-request payment recovery failed")

    def open_payments(self, now_ms: int) -> list[tuple[str, float]]:
        """(payout id, age in s) of every paid-out per-request token not yet accounted for."""
        state = self.book.state(self.operator)
        return [(pid, (now_ms - end.at_ms) / 1000) for pid, end in state.payouts_done.items()
                if is_payment(self.operator, pid) and end.kind == "settled"
                and not decide.provider_payment_closed(state, pid)]

    async def recover_once(self) -> int:
        """Recover what is old enough; returns how many payments were closed."""
        closed = 0
        for pid, age in self.open_payments(int(time.time() * 1000)):
            if age < self.cfg.x_cashu_grace_s or not await self.claims.acquire(f"xcashu:{pid}", LEASE_S):
                continue
            try:
                if (await self._recover(pid, age)).state == "closed":
                    closed += 1
            except Exception as e:
                log.warning("payment %s: recovery deferred (%r)", pid, e)
            finally:
                await self.claims.release(f"xcashu:{pid}")
        return closed

    async def _recover(self, pid: str, age: float) -> XCashuResult:
        token = (await self.rails.payout(self.operator, pid)).token
        if not token:
            return self._result(pid)  # the wallet cannot show it right now
        state = await self._cashu().token_state(token)  # NUT-07
        if state == "pending":
            return self._result(pid)
        try:
            # Unspent: taken back now. Spent by us earlier (a take whose journal write was lost): the wallet's
            # receipt answers and it is credited now. Spent by the node: the mint says so.
            return await self._take(token, pid, "reclaimed")
        except WalletError as e:
            if e.code == DUST and state == "unspent":
                return await self._close(pid, "lost", "the token is worth less than the mint's fee to take back")
            if e.code not in ("token_spent", DUST):
                raise
        entry = await self.topups.entry(provider_of(pid.split(":", 2)[2]) or "")
        status: Optional[int] = None
        answer = None
        if entry is not None and entry.url:
            try:
                answer = await self.topups.client.refund(entry.url, token)
                status = answer.status
            except NodeUnreachable:
                status = None
        action, reason = refund_action(status, age, self.cfg.x_cashu_give_up_s)
        if action == "change" and answer is not None:
            change = answer.body.get("token") if isinstance(answer.body, dict) else None
            change = change if isinstance(change, str) and change else answer.headers.get("X-Cashu", "")
            try:
                return await self._take(change, pid, "change")
            except WalletError as e:  # another mint's ecash, a spent token: not ours to credit
                if e.code == DUST:
                    return await self._close(pid, "spent", DUST_REASON)
                if e.status >= 500 or age < self.cfg.x_cashu_give_up_s:
                    raise
                return await self._close(pid, "lost", f"the node's change is unusable here ({e.code})")
        if action == "close_spent":
            return await self._close(pid, "spent", reason)
        if action == "close_lost":
            log.error("per-request payment %s lost: %s", pid, reason)
            return await self._close(pid, "lost", reason)
        return self._result(pid)

    # --- journal ---------------------------------------------------------------------------------------------
    def _cashu(self) -> Wallet:
        return self.rails.wallet.on_rail("cashu")

    async def _take(self, token: str, pid: str, outcome: str) -> XCashuResult:
        """Redeem ``token`` (change, or our own token back) into the wallet and credit it to the operator in the
        command that closes the payment. ``WalletError`` (code ``token_spent`` when the mint says so) if not."""
        wallet = self._cashu()
        if not token:
            raise WalletError("no token", code="invalid_token")
        deposit_id = wallet.token_id(token)
        if await self.claims.claim(f"deposit:{deposit_id}", self.operator) != self.operator:
            raise WalletError("that token belongs to another account", code="token_spent", status=409)
        redeemed = await wallet.redeem_token(token)
        change = (redeemed.deposit_id, redeemed.amount_msat, f"x-cashu {pid.split(':', 2)[2]}")
        await self.execute(self.operator, lambda s, at: decide.close_provider_payment(
            s, pid, outcome, at, change=change, reason=""))
        log.info("per-request payment %s: %s, %d msat back", pid, outcome, redeemed.amount_msat)
        return self._result(pid)

    async def _close(self, pid: str, outcome: str, reason: str) -> XCashuResult:
        await self.execute(self.operator, lambda s, at: decide.close_provider_payment(s, pid, outcome, at,
                                                                                      reason=reason))
        return self._result(pid)

    def _result(self, pid: str) -> XCashuResult:
        closed = self.book.state(self.operator).provider_payments.get(pid)
        return XCashuResult(payment_id=pid.split(":", 2)[2], state="closed" if closed else "open",
                            outcome=closed[0] if closed else "", change_msat=closed[1] if closed else 0)
