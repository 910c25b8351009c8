"""A wallet with no network: the default rail, and the one tests steer.

Invoices are real BOLT11 strings (signed with a throwaway key), so decoding and amounts follow the same path
as on a node. Knobs: ``outcome`` says what the next payments do (succeed, fail, stay pending, raise);
``settle_invoice`` pays one of our deposit invoices; ``resolve`` ends a pending payout; ``mint_token`` makes
a one-use token to redeem; ``rail_outcome`` makes one rail behave differently (the auto rail's fallback).

It has no money of its own: its assets are what the journal says came in and went out (``backing``, handed
over by the vault's rails through ``back_with_journal``: deposits − withdrawals, operator credits included, so
every instance reports the same figure after a restart) plus ``balance_msat``, an adjustment tests use to model
money arriving out of band or going missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Callable, Literal, Optional

from bolt11 import Bolt11, Feature, Features, FeatureState, MilliSatoshi, TagChar, Tags, encode

from .base import (DepositInvoice, OnSettled, PaymentStatus, PayoutPlan, Redeemed, SettledInvoice, SingleWallet,
                   WalletError, decode_bolt11, lightning_fee_limit_msat)

Outcome = Literal["succeed", "fail", "pending", "raise"]
# Not a secret: simulated invoices need a signature to decode, and anyone may make one.
_SIGNING_KEY = hashlib.sha256(b"arbstr simulated wallet").hexdigest()
SIM_TOKEN_PREFIX = "simtoken_"


def make_invoice(amount_msat: int, memo: str = "", expiry_s: int = 3600,
                 preimage: Optional[bytes] = None) -> tuple[str, str, bytes]:
    """(bolt11, payment hash, preimage) of a fresh regtest invoice."""
    preimage = preimage or os.urandom(32)
    payment_hash = hashlib.sha256(preimage).hexdigest()
    tags = Tags()
    tags.add(TagChar.features, Features.from_feature_list({Feature.payment_secret: FeatureState.supported}))
    tags.add(TagChar.description, memo)
    tags.add(TagChar.expire_time, expiry_s)
    tags.add(TagChar.payment_secret, os.urandom(32).hex())
    tags.add(TagChar.payment_hash, payment_hash)
    invoice = Bolt11(currency="bcrt", amount_msat=MilliSatoshi(amount_msat) if amount_msat else None,
                     date=int(time.time()), tags=tags)
    return encode(invoice, _SIGNING_KEY), payment_hash, preimage


@dataclass
class _Payment:
    plan: PayoutPlan
    status: PaymentStatus


class SimulatedWallet(SingleWallet):
    kind = "simulated"
    rails = ("lightning", "cashu")

    def __init__(self, fee_limit_ppm: int = 5_000, fee_limit_min_msat: int = 1_000,
                 initial_assets_msat: int = 0, name: str = "simulated") -> None:
        self.identity = name
        self.fee_limit_ppm = fee_limit_ppm
        self.fee_limit_min_msat = fee_limit_min_msat
        self.balance_msat = initial_assets_msat
        self.outcome: Outcome = "succeed"
        self.rail_outcome: dict[str, Outcome] = {}  # overrides ``outcome`` for payments on one rail
        self.backing: Callable[[], int] = lambda: 0
        self.issued: dict[str, str] = {}  # payout id -> token issued
        self.fee_msat = 0  # what a succeeding payment reports as its fee (≤ the limit)
        self.payments: dict[str, _Payment] = {}
        self.pay_calls = 0
        self._invoices: dict[str, tuple[int, Optional[int]]] = {}  # hash -> (amount, settle index once paid)
        self._settle_index = 0
        self._settled: asyncio.Queue[SettledInvoice] = asyncio.Queue()
        self._history: list[SettledInvoice] = []
        self._tokens: dict[str, int] = {}
        self._spent: set[str] = set()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    # --- deposits --------------------------------------------------------------------------------------
    async def create_invoice(self, amount_msat: int, memo: str, expiry_s: int) -> DepositInvoice:
        invoice, payment_hash, _ = make_invoice(amount_msat, memo, expiry_s)
        self._invoices[payment_hash] = (amount_msat, None)
        return DepositInvoice(payment_hash, invoice, amount_msat, (int(time.time()) + expiry_s) * 1000)

    def settle_invoice(self, payment_hash: str, amount_msat: Optional[int] = None) -> SettledInvoice:
        """Knob: someone paid our invoice (``amount_msat``: paid more or less than asked)."""
        asked, index = self._invoices[payment_hash]
        if index is not None:
            raise ValueError("already settled")
        self._settle_index += 1
        paid = asked if amount_msat is None else amount_msat
        self._invoices[payment_hash] = (asked, self._settle_index)
        settled = SettledInvoice(payment_hash, paid, self._settle_index)
        self._history.append(settled)
        self._settled.put_nowait(settled)
        return settled

    async def watch_invoices(self, after_settle_index: int, on_settled: OnSettled) -> None:
        # Like a node's subscription: first what settled after the cursor, then live ones.
        seen = after_settle_index
        for s in list(self._history):
            if s.settle_index > seen:
                await on_settled(s)
                seen = s.settle_index
        while True:
            s = await self._settled.get()
            if s.settle_index > seen:
                await on_settled(s)
                seen = s.settle_index

    def mint_token(self, amount_msat: int) -> str:
        """Knob: a one-use token worth ``amount_msat`` (the counterpart paid the wallet for it)."""
        token = SIM_TOKEN_PREFIX + os.urandom(16).hex()
        self._tokens[token] = amount_msat
        return token

    def token_id(self, token: str) -> str:
        return f"sim:{hashlib.sha256(token.encode()).hexdigest()}"

    async def redeem_token(self, token: str) -> Redeemed:
        if token in self._spent:
            raise WalletError("the token was already spent", code="token_spent", status=409)
        amount = self._tokens.get(token)
        if amount is None:
            raise WalletError("not a token of this wallet", code="invalid_token")
        self._spent.add(token)
        return Redeemed(self.token_id(token), amount, "")

    # --- payouts ---------------------------------------------------------------------------------------
    async def plan_payout(self, bolt11: str, rail: str = "lightning") -> PayoutPlan:
        payment_hash, amount, _ = decode_bolt11(bolt11)
        fee_limit = lightning_fee_limit_msat(amount, self.fee_limit_ppm, self.fee_limit_min_msat)
        # On the Cashu rail the payment is a melt, named by its quote (here: derived from the hash).
        reference = payment_hash if rail == "lightning" else f"melt-{payment_hash[:32]}"
        return PayoutPlan(rail, payment_hash, amount, fee_limit, reference, bolt11)

    async def plan_token_payout(self, payout_id: str, amount_msat: int) -> PayoutPlan:
        return PayoutPlan("cashu", payout_id, amount_msat, 0, payout_id, "")

    async def pay(self, plan: PayoutPlan) -> PaymentStatus:
        self.pay_calls += 1
        known = self.payments.get(plan.reference)
        if known is not None:  # a node refuses a second payment of a hash: the first one's fate stands
            return known.status
        outcome = self.rail_outcome.get(plan.rail, self.outcome)
        if outcome == "raise":
            raise ConnectionError("simulated: the rail did not answer")
        status = {"succeed": PaymentStatus("succeeded", self.fee_msat, preimage="00" * 32),
                  "fail": PaymentStatus("failed", reason=f"simulated failure on {plan.rail}"),
                  "pending": PaymentStatus("in_flight")}[outcome]
        if status.state == "succeeded" and not plan.destination:
            token = self.issued.setdefault(plan.reference, self.mint_token(plan.amount_msat))
            status = PaymentStatus("succeeded", 0, preimage=hashlib.sha256(token.encode()).hexdigest(), token=token)
        self.payments[plan.reference] = _Payment(plan, status)
        return status

    def resolve(self, reference: str, succeed: bool) -> None:
        """Knob: a pending payment ends."""
        p = self.payments[reference]
        if succeed:
            p.status = PaymentStatus("succeeded", self.fee_msat, preimage="00" * 32)
        else:
            p.status = PaymentStatus("failed", reason="simulated failure")

    async def check_payout(self, plan: PayoutPlan) -> PaymentStatus:
        if self.rail_outcome.get(plan.rail, self.outcome) == "raise":
            raise ConnectionError("simulated: the rail did not answer")
        p = self.payments.get(plan.reference)
        return p.status if p is not None else PaymentStatus("not_found")

    async def assets_msat(self) -> int:
        return self.backing() + self.balance_msat

    def back_with_journal(self, journal_net_msat: Callable[[], int]) -> None:
        self.backing = journal_net_msat
