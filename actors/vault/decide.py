"""Deciders: (state, command, now_ms) -> the events to journal, or an ``ArbstrError``. Pure.

Each decider first looks for its own op_id: a command already applied decides nothing (``noop="duplicate"``),
so a redelivered command, or a retry after a lost ack, never acts twice. ``Ledger`` strings deciders and
``evolve`` together over an in-memory journal, for tests and for the actor shell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

from schemas.errors import ArbstrError
from schemas.ledger import (
    AgentCreated,
    Deposited,
    EventBody,
    InvoiceIssued,
    LedgerEvent,
    PayoutApproved,
    PayoutFailed,
    PayoutRerouted,
    PayoutSettled,
    PayoutStarted,
    PolicySet,
    ProviderPaymentClosed,
    TokenRotated,
    Withdrawn,
)
from schemas.money import MAX_MSAT
from schemas.vault import AgentPolicy

# The hold deciders and the shared types live in their own modules; callers import them all from here.
from .decide_holds import (already_decided, approve, deny, expire, extend, op_name, release, reserve,  # noqa: F401
                           settle, settle_split)
from .decided import (APPROVAL_TIMEOUT, Decided, ExpiryAction, Noop, insufficient, positive,  # noqa: F401
                      require_agent)
from .fold import AccountState, Payout, apply_event, fold, next_events
from .policy import check


# -- the account ----------------------------------------------------------------------------------------------

def create_agent(state: AccountState, name: str, token_hash: str, policy: AgentPolicy, now_ms: int) -> Decided:
    op_id = "create"
    if state.created:
        if state.name == name and op_id in state.op_ids:
            return Decided(op_id, noop="duplicate")
        raise ArbstrError(409, f"agent {state.agent_id} already exists", code="agent_exists")
    return Decided(op_id, (AgentCreated(name=name, token_hash=token_hash, policy=policy),))


def rotate_token(state: AccountState, token_hash: str, now_ms: int, change_id: Optional[str] = None) -> Decided:
    """``change_id`` makes a retried rotation idempotent; without one each call is a new rotation."""
    require_agent(state)
    op_id = f"token:{change_id if change_id is not None else state.token_version + 1}"
    if op_id in state.op_ids:
        return Decided(op_id, noop="duplicate")
    return Decided(op_id, (TokenRotated(token_hash=token_hash),))


def set_policy(state: AccountState, policy: AgentPolicy, now_ms: int, change_id: Optional[str] = None) -> Decided:
    require_agent(state)
    op_id = f"policy:{change_id if change_id is not None else state.policy_version + 1}"
    if op_id in state.op_ids:
        return Decided(op_id, noop="duplicate")
    return Decided(op_id, (PolicySet(policy=policy),))


def within_bound(state: AccountState, amount_msat: int, vault_deposited_msat: int) -> None:
    """Refuse money that would take the account's or the vault's deposits past ``MAX_MSAT`` (all bitcoin), before
    anything is journaled: every counter of the books then stays far inside 64 bits. ``vault_deposited_msat`` is
    the sum over every agent as this instance knows it (exact per account; vault-wide, concurrent deposits to
    other agents on other instances may add a few more)."""
    for what, total in (("the account's", state.deposited_msat), ("the vault's", vault_deposited_msat)):
        if total + amount_msat > MAX_MSAT:
            raise ArbstrError(409, f"a deposit of {amount_msat} msat would take {what} deposits to "
                                   f"{total + amount_msat} msat, above the limit of {MAX_MSAT} msat (all bitcoin)",
                              code="deposit_limit_exceeded", param="amount_msat")


def deposit(state: AccountState, deposit_id: str, amount_msat: int, rail: str, reference: str,
            now_ms: int, vault_deposited_msat: Optional[int] = 0) -> Decided:
    """Credit a confirmed deposit once, however often its confirmation arrives.

    ``vault_deposited_msat`` None: money already received (a paid invoice, bounded when it was issued) is credited
    whatever the bound says — refusing it would leave it in the wallet, owned by nobody."""
    require_agent(state)
    op_id = f"deposit:{deposit_id}"
    if deposit_id in state.deposits:
        if state.deposits[deposit_id] != amount_msat:
            raise ArbstrError(409, f"deposit {deposit_id} was credited with {state.deposits[deposit_id]} msat",
                              code="deposit_conflict")
        return Decided(op_id, noop="duplicate")
    positive(amount_msat, "amount_msat")
    if vault_deposited_msat is not None:
        within_bound(state, amount_msat, vault_deposited_msat)
    return Decided(op_id, (Deposited(deposit_id=deposit_id, amount_msat=amount_msat, rail=rail, reference=reference),))


def withdraw(state: AccountState, withdrawal_id: str, amount_msat: int, rail: str, reference: str,
             now_ms: int) -> Decided:
    """A one-step debit with no rail behind it (the journal keeps the event; the HTTP flows use payouts, which
    hold first and go through approval). Policy-checked like a spend: needing approval denies here."""
    require_agent(state)
    op_id = f"withdraw:{withdrawal_id}"
    if withdrawal_id in state.withdrawals:
        if state.withdrawals[withdrawal_id] != amount_msat:
            raise ArbstrError(409, f"withdrawal {withdrawal_id} was debited with "
                                   f"{state.withdrawals[withdrawal_id]} msat", code="withdrawal_conflict")
        return Decided(op_id, noop="duplicate")
    positive(amount_msat, "amount_msat")
    if amount_msat > state.available_msat:
        raise insufficient(amount_msat, state.available_msat)
    decision = check(state.policy, state, amount_msat, now_ms)
    if not decision.allowed:
        raise decision.error()
    return Decided(op_id, (Withdrawn(withdrawal_id=withdrawal_id, amount_msat=amount_msat, rail=rail,
                                     reference=reference),))


# -- rails: invoices and payouts -------------------------------------------------------------------------------

def issue_invoice(state: AccountState, deposit_id: str, amount_msat: int, rail: str, payment_hash: str,
                  bolt11: str, expires_at_ms: int, now_ms: int, vault_deposited_msat: int = 0) -> Decided:
    """Record a deposit invoice made for the agent, so a payment of it can be credited to the right account."""
    require_agent(state)
    op_id = f"invoice:{deposit_id}"
    if op_id in state.op_ids:
        return Decided(op_id, noop="duplicate")
    if deposit_id in state.invoices or deposit_id in state.deposits:
        raise ArbstrError(409, f"deposit {deposit_id} already exists", code="deposit_conflict")
    positive(amount_msat, "amount_msat")
    within_bound(state, amount_msat, vault_deposited_msat)  # paid later, it must still be creditable
    return Decided(op_id, (InvoiceIssued(deposit_id=deposit_id, amount_msat=amount_msat, rail=rail,
                                         reference=payment_hash, bolt11=bolt11, expires_at_ms=expires_at_ms),))


def known_payout(state: AccountState, payout_id: str) -> Optional[Payout]:
    """The payout ``payout_id`` names, open or resolved."""
    done = state.payouts_done.get(payout_id)
    return state.payouts.get(payout_id) or (done.payout if done is not None else None)


def payout_conflict(what: str) -> ArbstrError:
    return ArbstrError(409, what, code="payout_conflict", param="payout_id", headers={"x-should-retry": "false"})


def same_payout(state: AccountState, payout_id: str, amount_msat: int, rail: Optional[str],
                payout_key: str = "") -> Optional[Payout]:
    """The payout a repeated request names, if any; 409 when the repeat asks for other terms (as a deposit id
    credited with another amount is): the first payout is never answered for a different request."""
    if payout_key:
        bound = state.payout_keys.get(payout_key)
        if bound is not None and bound != payout_id:
            raise payout_conflict(f"idempotency key {payout_key!r} already names another payout")
    known = known_payout(state, payout_id)
    if known is None:
        return None
    if known.amount_msat != amount_msat:
        raise payout_conflict(f"payout {payout_id} is for {known.amount_msat} msat, not {amount_msat}")
    if rail is not None and rail != (known.initial_rail or known.rail):
        raise payout_conflict(f"payout {payout_id} was started on the {known.initial_rail or known.rail} rail")
    return known


def start_payout(state: AccountState, payout_id: str, amount_msat: int, fee_limit_msat: int, rail: str,
                 reference: str, destination: str, now_ms: int, wallet: str = "", payout_key: str = "") -> Decided:
    """Hold a payout's amount and fee limit before the rail is called, policy-checked like any spend.

    ``amount_msat`` must be the destination's own figure (a decoded invoice's amount), never a caller's number.
    Starting the same payout again decides nothing; the same id (or idempotency key) with other terms is a 409.
    """
    require_agent(state)
    op_id = f"payout:{payout_id}"
    known = same_payout(state, payout_id, amount_msat, rail, payout_key)
    if known is not None:
        # Same terms: a concurrent repeat planned it again (a melt quote of its own, abandoned unpaid); the payout
        # journaled first, with its reference, is the one driven.
        return Decided(op_id, noop="duplicate")
    positive(amount_msat, "amount_msat")
    if not isinstance(fee_limit_msat, int) or isinstance(fee_limit_msat, bool) or fee_limit_msat < 0:
        raise ArbstrError(400, "fee_limit_msat must be a non-negative integer", code="invalid_amount",
                          param="fee_limit_msat")
    total = amount_msat + fee_limit_msat
    if total > state.available_msat:
        raise insufficient(total, state.available_msat)
    decision = check(state.policy, state, total, now_ms)
    deadline: Optional[int] = None
    if decision.outcome == "needs_approval":
        # Like a spend over the threshold: held (so the money cannot be spent twice meanwhile), sent only once a
        # human approves, released when denied or when nobody answers in time.
        deadline = now_ms + state.policy.approval_timeout_s * 1000
    elif not decision.allowed:
        raise decision.error()
    return Decided(op_id, (PayoutStarted(payout_id=payout_id, amount_msat=amount_msat, fee_limit_msat=fee_limit_msat,
                                         rail=rail, reference=reference, destination=destination, wallet=wallet,
                                         approval_deadline_ms=deadline, payout_key=payout_key),))


def approve_payout(state: AccountState, payout_id: str, now_ms: int) -> Decided:
    require_agent(state)
    op_id = f"payout_approved:{payout_id}"
    if op_id in state.op_ids:
        return Decided(op_id, noop="duplicate")
    payout = state.payouts.get(payout_id)
    if payout is None or payout.approval_deadline_ms is None:
        raise ArbstrError(409, f"payout {payout_id} is not waiting for approval", code="not_awaiting_approval")
    if payout.approval_deadline_ms <= now_ms:
        raise ArbstrError(409, f"payout {payout_id}'s approval timed out", code="approval_timed_out")
    return Decided(op_id, (PayoutApproved(payout_id=payout_id),))


def _to_resolve(state: AccountState, payout_id: str, op_id: str) -> Union[Decided, Payout]:
    """The open payout a settle or a failure resolves, or the no-op of a repeat."""
    require_agent(state)
    if op_id in state.op_ids:
        return Decided(op_id, noop="duplicate")
    done = state.payouts_done.get(payout_id)
    if done is not None:
        # Settling a payout journaled as failed (or the reverse) means the rail contradicted itself: only
        # definite failures are journaled. Loud, never silent.
        raise ArbstrError(409, f"payout {payout_id} was journaled as {done.kind}", code="payout_resolved")
    payout = state.payouts.get(payout_id)
    if payout is None:
        raise ArbstrError(404, f"no payout {payout_id}", code="unknown_payout")
    return payout


def settle_payout(state: AccountState, payout_id: str, fee_msat: int, preimage: str, now_ms: int) -> Decided:
    """The rail paid: amount + fee leave the account, the rest of the fee limit returns."""
    op_id = f"payout_settled:{payout_id}"
    payout = _to_resolve(state, payout_id, op_id)
    if isinstance(payout, Decided):
        return payout
    if not isinstance(fee_msat, int) or isinstance(fee_msat, bool) or fee_msat < 0:
        raise ArbstrError(400, "fee_msat must be a non-negative integer", code="invalid_amount", param="fee_msat")
    # The money has left: refusing to record it would leave the payout open forever. The agent is charged at most
    # the fee limit it was held for; anything above is the operator's loss, recorded on the event.
    charged_fee = min(fee_msat, payout.fee_limit_msat)
    return Decided(op_id, (PayoutSettled(payout_id=payout_id, charged_msat=payout.amount_msat + charged_fee,
                                         fee_msat=charged_fee, fee_overrun_msat=fee_msat - charged_fee,
                                         preimage=preimage, **_trace(payout)),))


def fail_payout(state: AccountState, payout_id: str, reason: str, now_ms: int) -> Decided:
    """Release a payout's hold. Call only on a definite failure: an ambiguous one must stay pending."""
    op_id = f"payout_failed:{payout_id}"
    payout = _to_resolve(state, payout_id, op_id)
    if isinstance(payout, Decided):
        return payout
    return Decided(op_id, (PayoutFailed(payout_id=payout_id, reason=reason or "failed", **_trace(payout)),))


def reroute_payout(state: AccountState, payout_id: str, from_rail: str, rail: str, fee_limit_msat: int,
                   reference: str, reason: str, now_ms: int, wallet: str = "") -> Decided:
    """The auto rail's single fallback after a definite failure on ``from_rail``: journaled before the other rail
    is called. The amount stays the invoice's; only the fee limit (and so the hold) follows the new rail."""
    require_agent(state)
    op_id = f"payout_rerouted:{payout_id}"
    if op_id in state.op_ids:
        return Decided(op_id, noop="duplicate")
    payout = state.payouts.get(payout_id)
    if payout is None:
        raise ArbstrError(404, f"no open payout {payout_id}", code="unknown_payout")
    if payout.fallback or payout.rail != from_rail or rail == from_rail:
        raise ArbstrError(409, f"payout {payout_id} already fell back once", code="payout_conflict")
    if not isinstance(fee_limit_msat, int) or isinstance(fee_limit_msat, bool) or fee_limit_msat < 0:
        raise ArbstrError(400, "fee_limit_msat must be a non-negative integer", code="invalid_amount")
    extra = fee_limit_msat - payout.fee_limit_msat
    if extra > state.available_msat:
        raise insufficient(extra, state.available_msat)
    return Decided(op_id, (PayoutRerouted(payout_id=payout_id, from_rail=from_rail, rail=rail,
                                          fee_limit_msat=fee_limit_msat, reference=reference, reason=reason,
                                          wallet=wallet),))


def provider_payment_closed(state: AccountState, payout_id: str) -> bool:
    return payout_id in state.provider_payments


def close_provider_payment(state: AccountState, payout_id: str, outcome: str, now_ms: int, *,
                           change: Optional[tuple[str, int, str]] = None, reason: str = "") -> Decided:
    """Account for a token paid out to pay a provider per request: credit what came back (``change`` = deposit id,
    msat, reference; once, by the deposit id) and close it (once). A change that arrives after the close (a late
    report) is still credited: the wallet holds it."""
    require_agent(state)
    op_id = f"provider_payment_closed:{payout_id}"
    bodies: list[EventBody] = []
    deposit_id = ""
    if change is not None:
        deposit_id, amount, reference = change
        if deposit_id in state.deposits:
            if state.deposits[deposit_id] != amount:
                raise ArbstrError(409, f"deposit {deposit_id} was credited with {state.deposits[deposit_id]} msat",
                                  code="deposit_conflict")
        elif amount > 0:
            bodies.append(Deposited(deposit_id=deposit_id, amount_msat=amount, rail="cashu", reference=reference))
    closed = payout_id in state.provider_payments
    if not closed:
        done = state.payouts_done.get(payout_id)
        if done is None or done.kind != "settled":
            raise ArbstrError(409, f"payout {payout_id} is not a paid-out token", code="payout_not_paid")
        bodies.append(ProviderPaymentClosed(payout_id=payout_id, outcome=outcome,  # type: ignore[arg-type]
                                            change_msat=change[1] if change is not None else 0, reason=reason[:500]))
    if not bodies:
        return Decided(op_id, noop="duplicate")
    return Decided(op_id if not closed else f"deposit:{deposit_id}", tuple(bodies))


def _trace(payout: Payout) -> dict[str, object]:
    return {"initial_rail": payout.initial_rail or payout.rail, "final_rail": payout.rail,
            "fallback": payout.fallback}


# -- an in-memory journal -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Applied:
    events: tuple[LedgerEvent, ...]
    duplicate: bool = False


class Ledger:
    """One agent's journal in memory and its folded state: what the actor shell keeps per agent."""

    def __init__(self, agent_id: str, events: Sequence[LedgerEvent] = ()) -> None:
        self.events: list[LedgerEvent] = list(events)
        self.state: AccountState = fold(self.events, agent_id)

    def apply(self, op_id: str, bodies: Sequence[EventBody], now_ms: int) -> Applied:
        """Journal ``bodies`` under ``op_id`` (all or none). An op_id seen before returns its original events."""
        known = self.state.op_ids.get(op_id)
        if known is not None:
            first, last = known
            return Applied(tuple(self.events[first - 1:last]), duplicate=True)
        if not bodies:
            return Applied(())
        events = next_events(self.state, op_id, bodies, now_ms)
        # One event is checked before it changes anything; several need a scratch copy to stay all-or-none.
        target = self.state if len(events) == 1 else self.state.copy()
        for event in events:
            apply_event(target, event)
        self.state = target
        self.events.extend(events)
        return Applied(tuple(events))

    def run(self, decided: Decided, now_ms: int) -> Applied:
        return self.apply(decided.op_id, decided.bodies, now_ms)
