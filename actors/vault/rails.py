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
import dataclasses
import logging
import os
import time
from typing import Awaitable, Callable, Optional

import orjson

from actors.runtime.tasks import cancel_and_wait
from schemas.config import WalletConfig
from schemas.errors import ArbstrError
from schemas.ledger import InvoiceIssued, LedgerEvent
from schemas.vault import (ClearFreeze, DepositReply, DepositRequest, FreezeState, PayoutList, PayoutView,
                           Reconciliation, WithdrawRequest)

from . import decide
from .book import Book
from .claims import Claims
from .fold import AccountState, Payout
from .freeze import FreezeSwitch
from .wallets.auto import choose_rail, other_rail
from .wallets.base import PaymentStatus, PayoutPlan, SettledInvoice, Wallet, WalletError, decode_bolt11

log = logging.getLogger("arbstr.vault.rails")

Execute = Callable[[str, Callable[[AccountState, int], decide.Decided]], Awaitable[object]]
Credit = Callable[[str, str, int, str, str], Awaitable[None]]  # (agent, deposit id, msat, rail, reference)


def wallet_error(e: WalletError) -> ArbstrError:
    return ArbstrError(e.status, e.message, code=e.code)


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


def _plan_of(p: Payout) -> PayoutPlan:
    return PayoutPlan(rail=p.rail, payment_hash=p.payout_id, amount_msat=p.amount_msat,
                      fee_limit_msat=p.fee_limit_msat, reference=p.reference, destination=p.destination)


def _now_ms() -> int:
    return int(time.time() * 1000)


# How long a payout's lease outlives a vault instance that stopped renewing it (a crash): after that, another
# instance resumes the payout. Renewed every third of it while a driver runs.
LEASE_TTL_S = 15.0
CREDIT_ATTEMPTS = 20  # × 0.5 s before a settled deposit the journal refuses is parked
PARKED_SCAN_S = 60.0  # how often every instance looks for credits parked by any instance


class Rails:
    def __init__(self, cfg: WalletConfig, wallet: Wallet, book: Book, execute: Execute,
                 freeze: FreezeSwitch, claims: Claims, catch_up: Callable[[], Awaitable[None]],
                 owns: Callable[[str], bool] = lambda agent_id: True, credit: Optional[Credit] = None) -> None:
        self.cfg = cfg
        self.wallet = wallet
        self.book = book
        self.execute = execute
        # Payouts are driven, and accounts written, by the owner of the account's partition; a deposit the rails
        # see settle is credited wherever the account lives (``credit`` forwards it to its owner).
        self.owns = owns
        self.credit = credit
        self.freeze = freeze
        self.claims = claims
        self.catch_up = catch_up
        if wallet.kind == "simulated":
            # A simulated wallet holds what the journal says came in and went out (operator credits included).
            wallet.backing = lambda: sum(s.deposited_msat - s.withdrawn_msat  # type: ignore[attr-defined]
                                         for s in self.book.agents())
        self._invoice_owner: dict[str, tuple[str, str]] = {}  # payment hash -> (agent id, deposit id)
        self._parked_here = False
        self._driving: dict[str, asyncio.Task[None]] = {}
        self._releasing: set[asyncio.Future[None]] = set()  # lease releases under way (awaited at stop)
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
        self._tasks = [asyncio.create_task(self._watch(cursor)), asyncio.create_task(self._check_forever()),
                       asyncio.create_task(self._watchdog())]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks, *self._driving.values())
        if self._releasing:  # leases let go before the connection drains
            await asyncio.wait(set(self._releasing), timeout=5)
        await self.wallet.stop()

    # --- deposits --------------------------------------------------------------------------------------
    async def deposit(self, agent_id: str, req: DepositRequest) -> DepositReply:
        # Every wallet issues Lightning invoices to deposit with: LND by AddInvoice, Cashu by a mint quote (the
        # mint's invoice; once paid, the ecash is minted into the vault's wallet). Tokens need the Cashu rail.
        if req.rail == "cashu" and "cashu" not in self.wallet.rails:
            raise ArbstrError(400, "the cashu rail is not configured", code="rail_unavailable", param="rail")
        try:
            if req.rail == "cashu":
                if req.token is None:
                    raise ArbstrError(400, "a Cashu deposit needs a token", code="invalid_value", param="token")
                token = req.token.strip()
                # Claimed for this agent before the mint sees it: whoever posts a token first owns it, even if
                # the vault dies between the swap and the journal (the wallet answers a token it already took
                # idempotently, so the owner's next post credits it; anyone else's is refused).
                deposit_id = self.wallet.token_id(token)
                if await self.claims.claim(f"deposit:{deposit_id}", agent_id) != agent_id:
                    raise ArbstrError(409, "that token was already deposited", code="token_spent", param="token")
                redeemed = await self.wallet.redeem_token(token)
                if redeemed.deposit_id != deposit_id:
                    raise ArbstrError(500, "the wallet named the token differently than it said it would",
                                      code="wallet_inconsistent")
                w = await self.execute(agent_id, lambda s, at: decide.deposit(
                    s, redeemed.deposit_id, redeemed.amount_msat, "cashu", redeemed.reference, at,
                    None))  # the ecash is the vault's now: credited whatever the bound (a mint caps tokens far below)
                if w.decided.noop:  # type: ignore[attr-defined]  # credited before: a token is spent once
                    raise ArbstrError(409, "that token was already deposited", code="token_spent", param="token")
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
            s, deposit_id, inv.amount_msat, "lightning", inv.payment_hash, inv.bolt11, inv.expires_at_ms, at,
            self.book.deposited_msat()))
        return DepositReply(deposit_id=deposit_id, rail="lightning", status="invoice", amount_msat=inv.amount_msat,
                            bolt11=inv.bolt11, payment_hash=inv.payment_hash, expires_at_ms=inv.expires_at_ms,
                            balance_msat=w.state.available_msat)  # type: ignore[attr-defined]

    async def credit_invoice(self, settled: SettledInvoice) -> None:
        """Credit a paid deposit invoice once (its deposit id), carrying the feed's cursor into the journal."""
        owner = self._invoice_owner.get(settled.payment_hash) or self._find_invoice(settled.payment_hash)
        if owner is None:
            log.info("settled invoice %s is not a deposit of ours", settled.payment_hash)
            return
        agent_id, deposit_id = owner
        reference = f"settle_index={settled.settle_index}"
        if self.credit is not None:
            await self.credit(agent_id, deposit_id, settled.amount_msat, "lightning", reference)
            return
        await self.execute(agent_id, lambda s, at: decide.deposit(
            s, deposit_id, settled.amount_msat, "lightning", reference, at, None))

    def _find_invoice(self, payment_hash: str) -> Optional[tuple[str, str]]:
        """The account that issued an invoice, from the read model (after a restart, or written elsewhere)."""
        for state in self.book.agents():
            for inv in state.invoices.values():
                if inv.reference == payment_hash:
                    self._invoice_owner[payment_hash] = (state.agent_id, inv.deposit_id)
                    return state.agent_id, inv.deposit_id
        return None

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
        """Credit, retrying a while; a credit the journal keeps refusing (one agent's ledger frozen, say) is parked
        vault-wide and retried by the check loop, so it neither blocks every other deposit nor is skipped."""
        for _ in range(CREDIT_ATTEMPTS):
            try:
                await self.credit_invoice(settled)
                return
            except ArbstrError as e:
                if e.status < 500:
                    log.error("deposit %s refused: %s", settled.payment_hash, e.message)
                    return
            await asyncio.sleep(0.5)
        log.critical("deposit %s (settle index %d) not credited yet; parked and retried", settled.payment_hash,
                     settled.settle_index)
        await self.claims.park(f"credit:{settled.payment_hash}", orjson.dumps(dataclasses.asdict(settled)))
        self._parked_here = True

    async def _retry_parked(self) -> None:
        for key, value in await self.claims.parked():
            settled = SettledInvoice(**orjson.loads(value))
            try:
                await self.credit_invoice(settled)
            except ArbstrError as e:
                if e.status >= 500:
                    continue  # still refused: next round
                log.error("parked deposit %s refused: %s", settled.payment_hash, e.message)
            await self.claims.unpark(key)

    # --- payouts ---------------------------------------------------------------------------------------
    def owner_of_payout(self, payout_id: str) -> Optional[str]:
        for state in self.book.agents():
            if payout_id in state.payouts or payout_id in state.payouts_done:
                return state.agent_id
        return None

    def _rail_for(self, req: WithdrawRequest, amount_msat: int) -> str:
        if req.rail is not None:
            rail = req.rail
        elif self.wallet.kind == "auto":
            rail = choose_rail(amount_msat, self.cfg.auto_threshold_msat)
        elif req.bolt11 is None:
            rail = "cashu"
        else:
            rail = "lightning" if "lightning" in self.wallet.rails else self.wallet.rails[0]
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
                status = await self.wallet.check_payout(_plan_of(done.payout))
                view = view.model_copy(update={"token": status.token})
            except Exception as e:
                log.warning("payout %s: the wallet could not show its token (%r)", payout_id, e)
        return view

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
        """Talk to the rail about one payout, holding its lease: one instance at a time, vault-wide."""
        if not self.owns(agent_id) or payout_id not in self.book.state(agent_id).payouts:
            return  # resolved already, or the account's partition is served elsewhere now
        if not await self.claims.acquire(f"payout:{payout_id}", LEASE_TTL_S):
            return  # another live instance is driving it
        renew = asyncio.create_task(self._renew(payout_id))
        try:
            await self._drive_once(agent_id, payout_id, resume)
        finally:
            renew.cancel()  # a renewal that still lands finds the lease gone: renewing never takes one
            # Shielded and tracked: a second cancel of this task (a stopping vault re-cancels) must not skip the
            # release, or the payout waits out the lease's TTL before any instance may drive it again.
            release = asyncio.ensure_future(self.claims.release(f"payout:{payout_id}"))
            self._releasing.add(release)
            release.add_done_callback(self._releasing.discard)
            await asyncio.shield(release)

    async def _renew(self, payout_id: str) -> None:
        while True:
            await asyncio.sleep(LEASE_TTL_S / 3)
            try:
                await self.claims.renew(f"payout:{payout_id}", LEASE_TTL_S)
            except Exception as e:
                log.warning("payout %s: lease not renewed (%r)", payout_id, e)

    def identity(self, rail: str) -> str:
        """The wallet that pays on ``rail`` here (a node's pubkey, a mint + wallet store)."""
        by_rail = getattr(self.wallet, "by_rail", None)
        return by_rail[rail].identity if by_rail is not None else self.wallet.identity

    async def _drive_once(self, agent_id: str, payout_id: str, resume: bool) -> None:
        payout = self.book.state(agent_id).payouts.get(payout_id)
        if payout is None:
            return  # resolved already
        if payout.approval_deadline_ms is not None:
            return  # held for a human: sent once approved
        if payout.wallet and payout.wallet != self.identity(payout.rail):
            # Started on a wallet this instance does not hold: asking ours would read "never sent" and pay twice.
            log.warning("payout %s belongs to wallet %s, not %s: left to an instance on it", payout_id,
                        payout.wallet, self.identity(payout.rail))
            return
        plan = _plan_of(payout)
        try:
            status = await self.wallet.check_payout(plan) if resume else PaymentStatus("not_found")
            if status.state == "not_found":
                if self.freeze.state.frozen:
                    return  # never sent, and the vault is closed: it stays pending until it reopens
                status = await self.wallet.pay(plan)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # Ambiguous: the payment may or may not be on its way. It stays pending for the next check.
            log.warning("payout %s: the rail gave no clear answer (%r); it stays pending", payout_id, e)
            return
        if status.state == "failed" and await self._fall_back(agent_id, payout, status.reason):
            return
        await self._record(agent_id, payout_id, status)

    async def _fall_back(self, agent_id: str, payout: Payout, reason: str) -> bool:
        """The auto rail's one retry on the other rail after a definite failure; journaled before it is sent."""
        if self.wallet.kind != "auto" or payout.fallback or not payout.destination or self.freeze.state.frozen:
            return False
        rail = other_rail(payout.rail)
        try:
            plan = await self.wallet.plan_payout(payout.destination, rail)
            await self.execute(agent_id, lambda s, at: decide.reroute_payout(
                s, payout.payout_id, payout.rail, rail, plan.fee_limit_msat, plan.reference, reason, at,
                wallet=self.identity(rail)))
        except (WalletError, ArbstrError) as e:
            log.warning("payout %s: no fallback to %s (%s)", payout.payout_id, rail,
                        getattr(e, "message", str(e)))
            return False
        log.info("payout %s failed on %s (%s); trying %s once", payout.payout_id, payout.rail, reason, rail)
        # Asked first: a reroute journaled earlier (by an instance that then died) may have been sent already.
        await self._drive_once(agent_id, payout.payout_id, resume=True)
        return True

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
        open_ = [(s.agent_id, pid) for s in self.book.agents() if self.owns(s.agent_id) for pid in s.payouts]
        tasks = [self.drive(agent_id, pid, resume=True) for agent_id, pid in open_]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _check_forever(self) -> None:
        parked_at = 0.0
        while True:
            await asyncio.sleep(self.cfg.check_interval_s)
            try:
                await self.resume_all()
                # Parked credits are rare: look for them now and then (listing keys opens a consumer), and at
                # once after this instance parked one.
                if self._parked_here or time.monotonic() - parked_at > PARKED_SCAN_S:
                    parked_at, self._parked_here = time.monotonic(), False
                    await self._retry_parked()
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
    async def holdings(self) -> dict[str, int]:
        """Assets by wallet identity (an auto wallet reports each of its rails)."""
        parts = getattr(self.wallet, "parts", (self.wallet,))
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
