"""The vault's side of the money rails: deposits by invoice or token, payouts, recovery, reconciliation.

Every step that moves money is journaled first. A payout is ``payout_started`` (its amount and fee limit
held) before the wallet is called; it becomes ``payout_settled`` when the rail says paid and
``payout_failed`` only when the rail says definitely not. Anything else — a timeout, an exception, an
in-flight answer — leaves it pending, and a loop (and every vault start) asks the rail again; a payout the
rail never saw (a crash between the journal and the call) is sent then, and the rail's idempotency on the
payment hash makes that a single payment whoever sends it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Optional

from schemas.config import WalletConfig
from schemas.errors import ArbstrError
from schemas.ledger import InvoiceIssued, LedgerEvent
from schemas.vault import DepositReply, DepositRequest, PayoutList, PayoutView, Reconciliation, WithdrawRequest

from . import decide
from .book import Book
from .fold import AccountState, Payout
from .wallets.base import PaymentStatus, PayoutPlan, SettledInvoice, Wallet, WalletError, decode_bolt11

log = logging.getLogger("arbstr.vault.rails")

Execute = Callable[[str, Callable[[AccountState, int], decide.Decided]], Awaitable[object]]


def wallet_error(e: WalletError) -> ArbstrError:
    return ArbstrError(e.status, e.message, code=e.code)


def payout_view(state: AccountState, payout_id: str) -> PayoutView:
    open_ = state.payouts.get(payout_id)
    done = state.payouts_done.get(payout_id)
    p = open_ if open_ is not None else (done.payout if done is not None else None)
    if p is None:
        raise ArbstrError(404, f"no payout {payout_id}", code="unknown_payout")
    status = "pending" if done is None else ("succeeded" if done.kind == "settled" else "failed")
    return PayoutView(payout_id=payout_id, agent_id=state.agent_id, rail=p.rail, status=status,
                      amount_msat=p.amount_msat, fee_limit_msat=p.fee_limit_msat,
                      fee_msat=done.fee_msat if done else 0, charged_msat=done.charged_msat if done else 0,
                      reference=p.reference, reason=done.reason if done else "", started_at_ms=p.started_at_ms,
                      balance_msat=state.available_msat)


def _plan_of(p: Payout) -> PayoutPlan:
    return PayoutPlan(rail=p.rail, payment_hash=p.payout_id, amount_msat=p.amount_msat,
                      fee_limit_msat=p.fee_limit_msat, reference=p.reference, destination=p.destination)


class Rails:
    def __init__(self, cfg: WalletConfig, wallet: Wallet, book: Book, execute: Execute) -> None:
        self.cfg = cfg
        self.wallet = wallet
        self.book = book
        self.execute = execute
        self._invoice_owner: dict[str, tuple[str, str]] = {}  # payment hash -> (agent id, deposit id)
        self._driving: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle -------------------------------------------------------------------------------------
    def on_events(self, events: list[LedgerEvent]) -> None:
        for e in events:
            if isinstance(e.body, InvoiceIssued):
                self._invoice_owner[e.body.reference] = (e.agent_id, e.body.deposit_id)

    async def start(self) -> None:
        """After the book has caught up with the ledger: resume payouts under way, then follow the rails."""
        await self.wallet.start()
        await self.resume_all()
        cursor = max((s.settle_index for s in self.book.agents()), default=0)
        self._tasks = [asyncio.create_task(self._watch(cursor)), asyncio.create_task(self._check_forever())]

    async def stop(self) -> None:
        for t in [*self._tasks, *self._driving.values()]:
            t.cancel()
        for t in [*self._tasks, *self._driving.values()]:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        await self.wallet.stop()

    # --- deposits --------------------------------------------------------------------------------------
    async def deposit(self, agent_id: str, req: DepositRequest) -> DepositReply:
        if req.rail not in self.wallet.rails:
            raise ArbstrError(400, f"the {req.rail} rail is not configured", code="rail_unavailable", param="rail")
        try:
            if req.rail == "cashu":
                if req.token is None:
                    raise ArbstrError(400, "a Cashu deposit needs a token", code="invalid_value", param="token")
                redeemed = await self.wallet.redeem_token(req.token.strip())
                w = await self.execute(agent_id, lambda s, at: decide.deposit(
                    s, redeemed.deposit_id, redeemed.amount_msat, "cashu", redeemed.reference, at))
                state = w.state  # type: ignore[attr-defined]
                return DepositReply(deposit_id=redeemed.deposit_id, rail="cashu", status="credited",
                                    amount_msat=redeemed.amount_msat, balance_msat=state.available_msat)
            if req.amount_msat is None:
                raise ArbstrError(400, "a Lightning deposit needs amount_msat", code="invalid_value",
                                  param="amount_msat")
            inv = await self.wallet.create_invoice(req.amount_msat, f"arbstr deposit {agent_id}",
                                                   self.cfg.invoice_expiry_s)
        except WalletError as e:
            raise wallet_error(e) from None
        deposit_id = f"ln:{inv.payment_hash}"
        w = await self.execute(agent_id, lambda s, at: decide.issue_invoice(
            s, deposit_id, inv.amount_msat, "lightning", inv.payment_hash, inv.bolt11, inv.expires_at_ms, at))
        self._invoice_owner[inv.payment_hash] = (agent_id, deposit_id)
        return DepositReply(deposit_id=deposit_id, rail="lightning", status="invoice", amount_msat=inv.amount_msat,
                            bolt11=inv.bolt11, payment_hash=inv.payment_hash, expires_at_ms=inv.expires_at_ms,
                            balance_msat=w.state.available_msat)  # type: ignore[attr-defined]

    async def credit_invoice(self, settled: SettledInvoice) -> None:
        """Credit a paid deposit invoice once (its deposit id), carrying the feed's cursor into the journal."""
        owner = self._invoice_owner.get(settled.payment_hash)
        if owner is None:
            log.info("settled invoice %s is not a deposit of ours", settled.payment_hash)
            return
        agent_id, deposit_id = owner
        await self.execute(agent_id, lambda s, at: decide.deposit(
            s, deposit_id, settled.amount_msat, "lightning", f"settle_index={settled.settle_index}", at))

    async def _watch(self, cursor: int) -> None:
        while True:
            try:
                await self.wallet.watch_invoices(cursor, self._credit_and_advance)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("invoice feed: %r; resubscribing", e)
            cursor = max((s.settle_index for s in self.book.agents()), default=cursor)
            await asyncio.sleep(1.0)

    async def _credit_and_advance(self, settled: SettledInvoice) -> None:
        # Retried until journaled: a settled invoice must never be skipped by the cursor.
        while True:
            try:
                await self.credit_invoice(settled)
                return
            except ArbstrError as e:
                if e.status < 500:
                    log.error("deposit %s refused: %s", settled.payment_hash, e.message)
                    return
            await asyncio.sleep(0.5)

    # --- payouts ---------------------------------------------------------------------------------------
    def _owner_of_payout(self, payout_id: str) -> Optional[str]:
        for state in self.book.agents():
            if payout_id in state.payouts or payout_id in state.payouts_done:
                return state.agent_id
        return None

    async def withdraw(self, agent_id: str, req: WithdrawRequest) -> PayoutView:
        rail = req.rail or ("lightning" if "lightning" in self.wallet.rails else "cashu")
        if rail not in self.wallet.rails:
            raise ArbstrError(400, f"the {rail} rail is not configured", code="rail_unavailable", param="rail")
        try:
            payment_hash, _, _ = decode_bolt11(req.bolt11)
        except WalletError as e:
            raise wallet_error(e) from None
        owner = self._owner_of_payout(payment_hash)
        if owner is not None and owner != agent_id:
            raise ArbstrError(409, "that invoice is being paid by another account", code="payout_conflict")
        if owner is None:
            try:
                plan = await self.wallet.plan_payout(req.bolt11)
            except WalletError as e:
                raise wallet_error(e) from None
            # The invoice's own amount is what is held, policy-checked and paid: the caller names no number.
            await self.execute(agent_id, lambda s, at: decide.start_payout(
                s, payment_hash, plan.amount_msat, plan.fee_limit_msat, rail, plan.reference, plan.destination, at))
        # A repeated request for a payout already journaled asks the rail first rather than sending blind.
        task = self.drive(agent_id, payment_hash, resume=owner is not None)
        try:
            await asyncio.wait_for(asyncio.shield(task), self.cfg.pay_wait_s)
        except asyncio.TimeoutError:
            pass
        return payout_view(self.book.slot(agent_id).state, payment_hash)

    def drive(self, agent_id: str, payout_id: str, *, resume: bool) -> asyncio.Task[None]:
        """One driver per payout at a time: a second request for it joins the first."""
        task = self._driving.get(payout_id)
        if task is None or task.done():
            task = asyncio.create_task(self._drive(agent_id, payout_id, resume))
            self._driving[payout_id] = task
            task.add_done_callback(lambda t, pid=payout_id: self._driving.pop(pid, None)
                                   if self._driving.get(pid) is t else None)
        return task

    async def _drive(self, agent_id: str, payout_id: str, resume: bool) -> None:
        payout = self.book.slot(agent_id).state.payouts.get(payout_id)
        if payout is None:
            return  # resolved already
        plan = _plan_of(payout)
        try:
            status = await self.wallet.check_payout(plan) if resume else PaymentStatus("not_found")
            if status.state == "not_found":
                status = await self.wallet.pay(plan)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # Ambiguous: the payment may or may not be on its way. It stays pending for the next check.
            log.warning("payout %s: the rail gave no clear answer (%r); it stays pending", payout_id, e)
            return
        await self._record(agent_id, payout_id, status)

    async def _record(self, agent_id: str, payout_id: str, status: PaymentStatus) -> None:
        try:
            if status.state == "succeeded":
                await self.execute(agent_id, lambda s, at: decide.settle_payout(
                    s, payout_id, status.fee_msat, status.preimage, at))
            elif status.state == "failed":
                await self.execute(agent_id, lambda s, at: decide.fail_payout(s, payout_id, status.reason, at))
        except ArbstrError as e:
            log.critical("payout %s of %s: the rail said %s but the journal refused: %s", payout_id, agent_id,
                         status.state, e.message)

    async def resume_all(self) -> None:
        """Ask the rail about every payout under way (and send those it never saw)."""
        open_ = [(s.agent_id, pid) for s in self.book.agents() for pid in s.payouts]
        tasks = [self.drive(agent_id, pid, resume=True) for agent_id, pid in open_]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.check_interval_s)
            try:
                await self.resume_all()
            except Exception:
                log.exception("payout check failed")

    def payouts(self, agent_id: Optional[str] = None, open_only: bool = False) -> PayoutList:
        out: list[PayoutView] = []
        for state in self.book.agents():
            if agent_id is not None and state.agent_id != agent_id:
                continue
            ids = list(state.payouts) + ([] if open_only else list(state.payouts_done))
            out.extend(payout_view(state, pid) for pid in ids)
        out.sort(key=lambda p: p.started_at_ms)
        return PayoutList(payouts=out)

    # --- reconciliation --------------------------------------------------------------------------------
    async def reconcile(self) -> Reconciliation:
        states = self.book.agents()
        liabilities = sum(s.available_msat + s.pending_msat + s.payout_pending_msat for s in states)
        try:
            assets = await self.wallet.assets_msat()
        except Exception as e:
            raise ArbstrError(503, f"the wallet could not report its assets: {e!r}", code="wallet_unavailable") \
                from None
        surplus = assets - liabilities
        return Reconciliation(liabilities_msat=liabilities, assets_msat=assets, surplus_msat=surplus,
                              margin_msat=self.cfg.reconcile_margin_msat,
                              ok=surplus + self.cfg.reconcile_margin_msat >= 0,
                              wallets={self.wallet.kind: assets})
