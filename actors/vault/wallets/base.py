"""The one interface every money rail implements, and the plain data it speaks.

A wallet moves sats; it decides nothing about accounts. The vault journals before it calls a wallet to pay,
and reads a wallet's answers as one of four states: only ``failed`` is definite enough to release the money.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Literal, Optional, Protocol, runtime_checkable

import bolt11

from schemas.money import ceil_div

# succeeded / failed are final; in_flight may still go either way; not_found: the rail never saw the payment
# (a crash between the journal and the call), so it is safe, and necessary, to send it.
PaymentState = Literal["succeeded", "failed", "in_flight", "not_found"]


class WalletError(Exception):
    """A request the rail refused before any money moved (bad invoice, spent token, …): the caller's 4xx."""

    def __init__(self, message: str, code: str = "wallet_refused", status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


@dataclass(frozen=True)
class DepositInvoice:
    payment_hash: str
    bolt11: str
    amount_msat: int
    expires_at_ms: int


@dataclass(frozen=True)
class SettledInvoice:
    """A deposit invoice the rail reports paid; ``settle_index`` orders them (the feed's cursor)."""

    payment_hash: str
    amount_msat: int
    settle_index: int


@dataclass(frozen=True)
class Redeemed:
    """A token the wallet now owns: credit ``amount_msat`` once under ``deposit_id``."""

    deposit_id: str
    amount_msat: int
    reference: str


@dataclass(frozen=True)
class PayoutPlan:
    """What a payout will cost, from the rail's own reading of the destination (never the caller's numbers).

    A Lightning or melt payout has ``destination`` = the BOLT11; a Cashu token payout has ``destination`` = ""
    and ``reference`` = the payout id, under which the wallet keeps the token it issued (so a repeat or a check
    after a crash finds the same token instead of issuing a second one).
    """

    rail: str
    payment_hash: str
    amount_msat: int
    fee_limit_msat: int
    reference: str  # what the rail calls the payment: the payment hash, a melt quote id, or the payout id
    destination: str  # the BOLT11, or "" for a token payout


@dataclass(frozen=True)
class PaymentStatus:
    state: PaymentState
    fee_msat: int = 0
    preimage: str = ""
    reason: str = ""
    token: str = ""  # a token payout: the ecash issued (a bearer secret: never journaled or logged)


OnSettled = Callable[[SettledInvoice], Awaitable[None]]


@runtime_checkable
class Wallet(Protocol):
    kind: str
    rails: tuple[str, ...]  # which rails this wallet serves: "lightning", "cashu"
    # Names the store of value (a node's pubkey, a mint + wallet store): instances reporting the same identity
    # share one wallet, so reconciliation counts its assets once. Known after start().
    identity: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def create_invoice(self, amount_msat: int, memo: str, expiry_s: int) -> DepositInvoice:
        """A BOLT11 to top up with; it is credited when ``watch_invoices`` reports it settled."""
        ...

    async def watch_invoices(self, after_settle_index: int, on_settled: OnSettled) -> None:
        """Report every invoice settled after ``after_settle_index``, in order, until cancelled."""
        ...

    def token_id(self, token: str) -> str:
        """The deposit id ``redeem_token`` will credit this token under, read off the token alone (no mint call):
        the vault claims it for the posting agent before any swap. ``WalletError`` if it is not a token."""
        ...

    async def redeem_token(self, token: str) -> Redeemed:
        """Take ownership of an ecash token (swap it at the mint); ``WalletError`` if it is spent or bad."""
        ...

    async def plan_payout(self, bolt11: str, rail: str) -> PayoutPlan:
        """Decode the invoice (and quote fees, or ask the mint for a melt quote) on ``rail``; no money moves."""
        ...

    async def plan_token_payout(self, payout_id: str, amount_msat: int) -> PayoutPlan:
        """A Cashu token of ``amount_msat`` to hand to the agent (rail "cashu"); no money moves yet."""
        ...

    async def pay(self, plan: PayoutPlan) -> PaymentStatus:
        """Send the payment. Must be idempotent on ``plan.reference``: a repeat never pays twice."""
        ...

    async def check_payout(self, plan: PayoutPlan) -> PaymentStatus: ...

    async def assets_msat(self) -> int:
        """What the wallet holds that backs the agents' balances."""
        ...

    # How the vault's rails treat this wallet: each wallet answers for itself (the rails never ask its kind).

    def on_rail(self, rail: str) -> Wallet:
        """The wallet that pays on ``rail``: itself, or the part of a combined wallet serving that rail."""
        ...

    def stores(self) -> tuple[Wallet, ...]:
        """The stores of value behind this wallet, each reporting its own assets under its own identity."""
        ...

    def rail_for(self, amount_msat: int, has_invoice: bool, auto_threshold_msat: int) -> str:
        """The rail a payout goes on when the caller names none (``has_invoice``: it brought a BOLT11)."""
        ...

    def fallback_rail(self, rail: str) -> Optional[str]:
        """The rail a payout that definitely failed on ``rail`` is retried on, once; None: no retry."""
        ...

    def back_with_journal(self, journal_net_msat: Callable[[], int]) -> None:
        """Offered what the journal says came in and went out: a wallet with no money of its own (simulated)
        reports it as its assets; a wallet holding real money ignores it."""
        ...


class SingleWallet:
    """What a wallet that is one store of value answers about itself (every kind but ``auto``)."""

    rails: tuple[str, ...]

    def on_rail(self, rail: str) -> Wallet:
        return self  # type: ignore[return-value]

    def stores(self) -> tuple[Wallet, ...]:
        return (self,)  # type: ignore[return-value]

    def rail_for(self, amount_msat: int, has_invoice: bool, auto_threshold_msat: int) -> str:
        if not has_invoice:
            return "cashu"  # only ecash pays out without a destination: a token
        return "lightning" if "lightning" in self.rails else self.rails[0]

    def fallback_rail(self, rail: str) -> Optional[str]:
        return None

    def back_with_journal(self, journal_net_msat: Callable[[], int]) -> None:
        return None  # real money: its assets are what it holds


def decode_bolt11(invoice: str) -> tuple[str, int, int]:
    """(payment hash, amount msat, expiry epoch s) of a BOLT11; ``WalletError`` if it is unusable for a payout."""
    try:
        decoded = bolt11.decode(invoice.strip())
    except Exception as e:
        raise WalletError(f"not a valid BOLT11 invoice: {e}", code="invalid_invoice") from None
    amount = int(decoded.amount_msat or 0)
    if amount <= 0:
        raise WalletError("the invoice has no amount: only invoices that name their amount can be paid",
                          code="invoice_without_amount")
    return decoded.payment_hash, amount, decoded.date + decoded.expiry


def lightning_fee_limit_msat(amount_msat: int, ppm: int, min_msat: int) -> int:
    """The most a Lightning payout may pay in routing fees: a share of the amount, never 0 (0 = free routes only)."""
    return max(min_msat, 1, ceil_div(amount_msat * ppm, 1_000_000))
