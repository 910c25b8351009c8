"""Deposits on the rails: invoices and tokens, and crediting the invoices the wallet reports settled (retried,
then parked vault-wide if the journal keeps refusing).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Optional

import orjson

from schemas.errors import ArbstrError
from schemas.ledger import InvoiceIssued, LedgerEvent
from schemas.vault import (DepositReply, DepositRequest)

from . import decide
from .rails_core import RailsCore, wallet_error
from .wallets.base import SettledInvoice, WalletError

log = logging.getLogger("arbstr.vault.rails")

CREDIT_ATTEMPTS = 20  # × 0.5 s before a settled deposit the journal refuses is parked


class DepositRails(RailsCore):
    """Money coming in through the wallet."""

    def on_events(self, events: list[LedgerEvent]) -> None:
        for e in events:
            if isinstance(e.body, InvoiceIssued):
                self._invoice_owner[e.body.reference] = (e.agent_id, e.body.deposit_id)

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
