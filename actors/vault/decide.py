"""Deciders: (state, command, now_ms) -> the events to journal, or an ``ArbstrError``. Pure.

Each decider first looks for its own op_id: a command already applied decides nothing (``noop="duplicate"``),
so a redelivered command, or a retry after a lost ack, never acts twice. ``Ledger`` strings deciders and
``evolve`` together over an in-memory journal, for tests and for the actor shell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence, Union

from schemas.errors import ArbstrError
from schemas.ledger import (
    AgentCreated,
    Approved,
    Denied,
    Deposited,
    EventBody,
    Expired,
    InvoiceIssued,
    LedgerEvent,
    PayoutApproved,
    PayoutFailed,
    PayoutRerouted,
    PayoutSettled,
    PayoutStarted,
    PolicySet,
    ProviderPaymentClosed,
    Released,
    Reserved,
    Settled,
    Tombstoned,
    TokenRotated,
    Withdrawn,
)
from schemas.money import cost_msat, max_output_tokens_for
from schemas.router import Envelope
from schemas.vault import AgentPolicy

from .fold import AccountState, Hold, Payout, apply_event, fold, next_events
from .policy import check, daily_headroom_msat

Noop = Literal["", "duplicate", "resolved", "tombstoned"]
ExpiryAction = Literal["charge", "release"]

APPROVAL_TIMEOUT = "approval_timeout"


@dataclass(frozen=True)
class Decided:
    """What a command decided: events to journal under ``op_id``, or none and why (``noop``)."""

    op_id: str
    bodies: tuple[EventBody, ...] = ()
    noop: Noop = ""


def _require_agent(state: AccountState) -> None:
    if not state.created:
        raise ArbstrError(404, f"unknown agent {state.agent_id}", code="unknown_agent")


def _positive(amount_msat: int, param: str) -> None:
    if not isinstance(amount_msat, int) or isinstance(amount_msat, bool) or amount_msat <= 0:
        raise ArbstrError(400, f"{param} must be a positive integer of millisats", code="invalid_amount", param=param)


def insufficient(needed_msat: int, available_msat: int) -> ArbstrError:
    return ArbstrError(402, f"insufficient balance: {needed_msat} msat needed, {available_msat} msat available",
                       code="insufficient_balance", headers={"x-should-retry": "false"})


def _settled_rid(state: AccountState, op_id: str, rid: str) -> Optional[Decided]:
    """The no-op answer for a rid that already ended, or None if it is still open or unknown."""
    if op_id in state.op_ids:
        return Decided(op_id, noop="duplicate")
    if rid in state.resolutions:
        return Decided(op_id, noop="resolved")
    if rid in state.tombstones:
        return Decided(op_id, noop="tombstoned")
    return None


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
    _require_agent(state)
    op_id = f"token:{change_id if change_id is not None else state.token_version + 1}"
    if op_id in state.op_ids:
        return Decided(op_id, noop="duplicate")
    return Decided(op_id, (TokenRotated(token_hash=token_hash),))


def set_policy(state: AccountState, policy: AgentPolicy, now_ms: int, change_id: Optional[str] = None) -> Decided:
    _require_agent(state)
    op_id = f"policy:{change_id if change_id is not None else state.policy_version + 1}"
    if op_id in state.op_ids:
        return Decided(op_id, noop="duplicate")
    return Decided(op_id, (PolicySet(policy=policy),))


def deposit(state: AccountState, deposit_id: str, amount_msat: int, rail: str, reference: str,
            now_ms: int) -> Decided:
    """Credit a confirmed deposit once, however often its confirmation arrives."""
    _require_agent(state)
    op_id = f"deposit:{deposit_id}"
    if deposit_id in state.deposits:
        if state.deposits[deposit_id] != amount_msat:
            raise ArbstrError(409, f"deposit {deposit_id} was credited with {state.deposits[deposit_id]} msat",
                              code="deposit_conflict")
        return Decided(op_id, noop="duplicate")
    _positive(amount_msat, "amount_msat")
    return Decided(op_id, (Deposited(deposit_id=deposit_id, amount_msat=amount_msat, rail=rail, reference=reference),))


def withdraw(state: AccountState, withdrawal_id: str, amount_msat: int, rail: str, reference: str,
             now_ms: int) -> Decided:
    """A one-step debit with no rail behind it (the journal keeps the event; the HTTP flows use payouts, which
    hold first and go through approval). Policy-checked like a spend: needing approval denies here."""
    _require_agent(state)
    op_id = f"withdraw:{withdrawal_id}"
    if withdrawal_id in state.withdrawals:
        if state.withdrawals[withdrawal_id] != amount_msat:
            raise ArbstrError(409, f"withdrawal {withdrawal_id} was debited with "
                                   f"{state.withdrawals[withdrawal_id]} msat", code="withdrawal_conflict")
        return Decided(op_id, noop="duplicate")
    _positive(amount_msat, "amount_msat")
    if amount_msat > state.available_msat:
        raise insufficient(amount_msat, state.available_msat)
    decision = check(state.policy, state, amount_msat, now_ms)
    if not decision.allowed:
        raise decision.error()
    return Decided(op_id, (Withdrawn(withdrawal_id=withdrawal_id, amount_msat=amount_msat, rail=rail,
                                     reference=reference),))


# -- rails: invoices and payouts -------------------------------------------------------------------------------

def issue_invoice(state: AccountState, deposit_id: str, amount_msat: int, rail: str, payment_hash: str,
                  bolt11: str, expires_at_ms: int, now_ms: int) -> Decided:
    """Record a deposit invoice made for the agent, so a payment of it can be credited to the right account."""
    _require_agent(state)
    op_id = f"invoice:{deposit_id}"
    if op_id in state.op_ids:
        return Decided(op_id, noop="duplicate")
    if deposit_id in state.invoices or deposit_id in state.deposits:
        raise ArbstrError(409, f"deposit {deposit_id} already exists", code="deposit_conflict")
    _positive(amount_msat, "amount_msat")
    return Decided(op_id, (InvoiceIssued(deposit_id=deposit_id, amount_msat=amount_msat, rail=rail,
                                         reference=payment_hash, bolt11=bolt11, expires_at_ms=expires_at_ms),))


def start_payout(state: AccountState, payout_id: str, amount_msat: int, fee_limit_msat: int, rail: str,
                 reference: str, destination: str, now_ms: int, wallet: str = "") -> Decided:
    """Hold a payout's amount and fee limit before the rail is called, policy-checked like any spend.

    ``amount_msat`` must be the destination's own figure (a decoded invoice's amount), never a caller's number.
    Starting the same payout again decides nothing; the same id with other terms is a conflict.
    """
    _require_agent(state)
    op_id = f"payout:{payout_id}"
    known = state.payouts.get(payout_id) or (state.payouts_done[payout_id].payout
                                             if payout_id in state.payouts_done else None)
    if known is not None:
        if (known.amount_msat, known.reference, known.rail) != (amount_msat, reference, rail):
            raise ArbstrError(409, f"payout {payout_id} exists with other terms", code="payout_conflict")
        return Decided(op_id, noop="duplicate")
    _positive(amount_msat, "amount_msat")
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
                                         approval_deadline_ms=deadline),))


def approve_payout(state: AccountState, payout_id: str, now_ms: int) -> Decided:
    _require_agent(state)
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
    _require_agent(state)
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
    _require_agent(state)
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
    _require_agent(state)
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


# -- holds ----------------------------------------------------------------------------------------------------

def _output_budget(state: AccountState, envelope: Envelope, now_ms: int) -> int:
    """The most output tokens the agent can afford, up to the envelope's ceiling.

    The budget also stays within what the policy allows without approval (per-transaction, daily headroom,
    approval threshold) when that still leaves at least one token: a request with no max_tokens should not be
    denied or sent for approval just because the vault sized it large. If a cap leaves no room, it is ignored
    here and the policy check decides on the affordable size.
    """
    def tokens(budget_msat: int) -> int:
        return max_output_tokens_for(budget_msat, envelope.input_tokens, envelope.input_rate,
                                     envelope.output_rate, envelope.base_fee_msat)

    affordable = tokens(state.available_msat)
    if affordable < 1:
        return 0
    policy = state.policy
    budget = affordable
    for cap in (policy.max_tx_msat, daily_headroom_msat(policy, state, now_ms), policy.approval_over_msat):
        if cap is not None:
            within = tokens(cap)
            if within >= 1:
                budget = min(budget, within)
    return min(budget, envelope.max_output_tokens)


def reserve(state: AccountState, rid: str, envelope: Envelope, now_ms: int, *, ttl_ms: int,
            provider: str = "", model: str = "") -> Decided:
    """Hold the envelope's worst-case cost, or refuse (402, 403, 409, 429), or queue it for approval.

    A repeat of a reserve already journaled decides nothing: the caller answers from the existing hold (or its
    resolution). A hold awaiting approval expires ``ttl_ms`` after its approval deadline.
    """
    _require_agent(state)
    op_id = f"reserve:{rid}"
    if op_id in state.op_ids:
        return Decided(op_id, noop="duplicate")
    if rid in state.tombstones:
        raise ArbstrError(409, f"request {rid} was already released", code="request_released")
    if state.knows(rid):  # pragma: no cover - a known, non-tombstoned rid always has its reserve op_id
        raise ArbstrError(409, f"request {rid} already has a reservation", code="request_exists")
    if envelope.output_tokens is not None:
        output_tokens = envelope.output_tokens
    else:
        output_tokens = _output_budget(state, envelope, now_ms)
        if output_tokens < 1:
            raise insufficient(cost_msat(envelope.input_tokens, 1, envelope.input_rate, envelope.output_rate,
                                         envelope.base_fee_msat), state.available_msat)
    amount = cost_msat(envelope.input_tokens, output_tokens, envelope.input_rate, envelope.output_rate,
                       envelope.base_fee_msat)
    if amount > state.available_msat:
        raise insufficient(amount, state.available_msat)
    decision = check(state.policy, state, amount, now_ms)
    if decision.denied:
        raise decision.error()
    if decision.allowed:
        body = Reserved(rid=rid, amount_msat=amount, output_tokens=output_tokens, expires_at_ms=now_ms + ttl_ms,
                        provider=provider, model=model, state="held")
    else:
        deadline = now_ms + state.policy.approval_timeout_s * 1000
        body = Reserved(rid=rid, amount_msat=amount, output_tokens=output_tokens, expires_at_ms=deadline + ttl_ms,
                        provider=provider, model=model, state="awaiting_approval", approval_deadline_ms=deadline)
    return Decided(op_id, (body,))


def settle_split(hold_msat: int, cost: int, available_msat: int) -> tuple[int, int]:
    """(charged, uncollectible) of a settle: the hold covers up to its amount, available funds cover an overrun,
    and what neither covers is recorded, never overdrawn."""
    covered = min(cost, hold_msat)
    overrun = cost - covered
    from_available = min(overrun, available_msat)
    return covered + from_available, overrun - from_available


def settle(state: AccountState, rid: str, cost: int, now_ms: int, *, input_tokens: int = 0,
           output_tokens: int = 0, provider: str = "", model: str = "", estimated: bool = False) -> Decided:
    """Charge a finished request. An unknown rid is tombstoned so a reserve delivered later is refused."""
    _require_agent(state)
    op_id = f"settle:{rid}"
    done = _settled_rid(state, op_id, rid)
    if done is not None:
        return done
    if not isinstance(cost, int) or isinstance(cost, bool) or cost < 0:
        raise ArbstrError(400, "cost must be a non-negative integer of millisats", code="invalid_amount",
                          param="cost_msat")
    hold = state.holds.get(rid)
    if hold is None:
        return Decided(op_id, (Tombstoned(rid=rid, reason="settled_before_reserve"),))
    # A hold still awaiting approval is charged too: a settle means the provider was called and paid.
    charged, uncollectible = settle_split(hold.amount_msat, cost, state.available_msat)
    return Decided(op_id, (Settled(rid=rid, cost_msat=cost, charged_msat=charged, uncollectible_msat=uncollectible,
                                   input_tokens=input_tokens, output_tokens=output_tokens,
                                   provider=provider or hold.provider, model=model or hold.model,
                                   estimated=estimated),))


def release(state: AccountState, rid: str, reason: str, now_ms: int) -> Decided:
    """Return a hold's funds. An unknown rid is tombstoned so a reserve delivered later is refused."""
    _require_agent(state)
    op_id = f"release:{rid}"
    done = _settled_rid(state, op_id, rid)
    if done is not None:
        return done
    if rid not in state.holds:
        return Decided(op_id, (Tombstoned(rid=rid, reason=reason or "released_before_reserve"),))
    return Decided(op_id, (Released(rid=rid, reason=reason),))


def expire(state: AccountState, rid: str, now_ms: int, action: ExpiryAction = "charge") -> Decided:
    """Resolve a hold past its TTL: charge it (the provider was probably paid) or release it.

    A hold still awaiting approval past its deadline is denied instead. A hold not yet due is 409 ``not_expired``.
    """
    _require_agent(state)
    op_id = f"expire:{rid}"
    done = _settled_rid(state, op_id, rid)
    if done is not None:
        return done
    hold = state.holds.get(rid)
    if hold is None:
        return Decided(op_id, (Tombstoned(rid=rid, reason="expired_before_reserve"),))
    if hold.state == "awaiting_approval":
        assert hold.approval_deadline_ms is not None
        if hold.approval_deadline_ms <= now_ms:
            return Decided(op_id, (Denied(rid=rid, reason=APPROVAL_TIMEOUT),))
        raise ArbstrError(409, f"request {rid} awaits approval until {hold.approval_deadline_ms}",
                          code="not_expired")
    if hold.expires_at_ms > now_ms:
        raise ArbstrError(409, f"request {rid} expires at {hold.expires_at_ms}", code="not_expired")
    charged = hold.amount_msat if action == "charge" else 0
    return Decided(op_id, (Expired(rid=rid, action=action, charged_msat=charged),))


def _awaiting(state: AccountState, op_id: str, rid: str) -> tuple[Optional[Decided], Optional[Hold]]:
    done = _settled_rid(state, op_id, rid)
    if done is not None:
        return done, None
    hold = state.holds.get(rid)
    if hold is None:
        raise ArbstrError(404, f"no reservation {rid}", code="unknown_request")
    if hold.state != "awaiting_approval":
        raise ArbstrError(409, f"request {rid} is not awaiting approval", code="not_awaiting_approval")
    return None, hold


def approve(state: AccountState, rid: str, now_ms: int) -> Decided:
    """Let a held spend proceed. An approval that comes after the deadline denies instead: the timeout won."""
    _require_agent(state)
    op_id = f"approve:{rid}"
    done, hold = _awaiting(state, op_id, rid)
    if done is not None:
        return done
    assert hold is not None and hold.approval_deadline_ms is not None
    if now_ms >= hold.approval_deadline_ms:
        return Decided(op_id, (Denied(rid=rid, reason=APPROVAL_TIMEOUT),))
    return Decided(op_id, (Approved(rid=rid),))


def deny(state: AccountState, rid: str, reason: str, now_ms: int) -> Decided:
    _require_agent(state)
    op_id = f"deny:{rid}"
    done, _ = _awaiting(state, op_id, rid)
    if done is not None:
        return done
    return Decided(op_id, (Denied(rid=rid, reason=reason or "denied"),))


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
