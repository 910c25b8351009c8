"""Deciders of holds: reserve, settle, release, expire, approve, deny. Pure, like every decider (see ``decide``).

A request id (rid) names one request of one agent; each reserve of it is an *attempt* named by the gateway's
nonce. One hold per rid is open at a time. A rid whose hold was released (nothing charged) may be reserved again by
a new attempt — a failed request's retry keeps its X-Request-Id — while a settle or a charged expiry uses the rid
up. A release or settle naming an attempt never journaled tombstones exactly that attempt, so its reserve, delivered
late, is refused; one naming no attempt (older callers) stands for the whole rid, as it always did.
"""

from __future__ import annotations

from typing import Optional, Union

from schemas.errors import ArbstrError, request_id_reused
from schemas.ledger import Approved, Denied, Expired, HoldExtended, Released, Reserved, Settled, Tombstoned
from schemas.money import cost_msat, max_output_tokens_for
from schemas.router import Envelope

from .decided import APPROVAL_TIMEOUT, Decided, ExpiryAction, insufficient, require_agent
from .fold import AccountState, Hold
from .policy import check, daily_headroom_msat


def op_name(kind: str, rid: str, attempt: str = "") -> str:
    """The op id of a hold command: ``kind:rid`` for callers naming no attempt (as journals always had it),
    ``kind:rid#attempt`` otherwise ("#" never occurs in a gateway's request ids nor in attempts)."""
    return f"{kind}:{rid}" if not attempt else f"{kind}:{rid}#{attempt}"


def _output_budget(state: AccountState, envelope: Envelope, now_ms: int) -> int:
    """The most output tokens the agent can afford over every choice, up to the envelope's ceiling per choice.

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
            if within >= envelope.choices:
                budget = min(budget, within)
    return min(budget // envelope.choices, envelope.max_output_tokens) * envelope.choices


def _reuse_refusal(state: AccountState, rid: str, attempt: str) -> Optional[ArbstrError]:
    """Why ``rid`` cannot take a new reserve attempt now, or None when it can."""
    if state.tombstoned(rid, attempt):
        return ArbstrError(409, f"request {rid} was already released", code="request_released")
    if rid in state.holds:  # in flight: one hold shared by two upstream calls would let one of them go unpaid
        return request_id_reused(rid)
    res = state.resolutions.get(rid)
    if res is not None and (not res.reusable or not attempt):
        # Charged: the id names a request that was served. Or a caller naming no attempt, which cannot be told
        # apart from a late copy of the reserve that was released.
        return request_id_reused(rid)
    return None


def reserve(state: AccountState, rid: str, envelope: Envelope, now_ms: int, *, ttl_ms: int,
            provider: str = "", model: str = "", attempt: str = "") -> Decided:
    """Hold the envelope's worst-case cost, or refuse (402, 403, 409, 429), or queue it for approval.

    A repeat of a reserve already journaled (same rid and attempt) decides nothing: the caller answers from the
    existing hold (or its resolution). A hold awaiting approval expires ``ttl_ms`` after its approval deadline.
    """
    require_agent(state)
    op_id = op_name("reserve", rid, attempt)
    if op_id in state.op_ids:
        return Decided(op_id, noop="duplicate")
    refusal = _reuse_refusal(state, rid, attempt)
    if refusal is not None:
        raise refusal
    if envelope.output_tokens is not None:
        output_tokens = envelope.output_tokens * envelope.choices
    else:
        output_tokens = _output_budget(state, envelope, now_ms)
        if output_tokens < 1:
            raise insufficient(cost_msat(envelope.input_tokens, envelope.choices, envelope.input_rate,
                                         envelope.output_rate, envelope.base_fee_msat), state.available_msat)
    amount = cost_msat(envelope.input_tokens, output_tokens, envelope.input_rate, envelope.output_rate,
                       envelope.base_fee_msat)
    if amount > state.available_msat:
        raise insufficient(amount, state.available_msat)
    decision = check(state.policy, state, amount, now_ms)
    if decision.denied:
        raise decision.error()
    if decision.allowed:
        body = Reserved(rid=rid, attempt=attempt, amount_msat=amount, output_tokens=output_tokens,
                        expires_at_ms=now_ms + ttl_ms, provider=provider, model=model, state="held")
    else:
        deadline = now_ms + state.policy.approval_timeout_s * 1000
        body = Reserved(rid=rid, attempt=attempt, amount_msat=amount, output_tokens=output_tokens,
                        expires_at_ms=deadline + ttl_ms, provider=provider, model=model,
                        state="awaiting_approval", approval_deadline_ms=deadline)
    return Decided(op_id, (body,))


def _target(state: AccountState, op_id: str, rid: str, attempt: str) -> Union[Decided, Hold, None]:
    """What a settle or release of (rid, attempt) acts on: the open hold, a no-op answer (a repeat, an attempt
    that already ended or was tombstoned), or None: an attempt never reserved, to tombstone."""
    if op_id in state.op_ids:
        return Decided(op_id, noop="duplicate")
    hold = state.holds.get(rid)
    if hold is not None and (not attempt or hold.attempt == attempt):
        return hold
    if attempt in state.tombstones.get(rid, {}):
        return Decided(op_id, noop="tombstoned")
    if (rid in state.resolutions) if not attempt else state.reserved(rid, attempt):
        return Decided(op_id, noop="resolved")
    return None


def settle_split(hold_msat: int, cost: int, available_msat: int) -> tuple[int, int]:
    """(charged, uncollectible) of a settle: the hold covers up to its amount, available funds cover an overrun,
    and what neither covers is recorded, never overdrawn."""
    covered = min(cost, hold_msat)
    overrun = cost - covered
    from_available = min(overrun, available_msat)
    return covered + from_available, overrun - from_available


def settle(state: AccountState, rid: str, cost: int, now_ms: int, *, input_tokens: int = 0,
           output_tokens: int = 0, provider: str = "", model: str = "", estimated: bool = False,
           attempt: str = "", provider_cost_msat: Optional[int] = None, cost_drift: bool = False) -> Decided:
    """Charge a finished request. An attempt never reserved is tombstoned so its reserve, if it comes, is refused."""
    require_agent(state)
    op_id = op_name("settle", rid, attempt)
    target = _target(state, op_id, rid, attempt)
    if isinstance(target, Decided):
        return target
    if not isinstance(cost, int) or isinstance(cost, bool) or cost < 0:
        raise ArbstrError(400, "cost must be a non-negative integer of millisats", code="invalid_amount",
                          param="cost_msat")
    if target is None:
        return Decided(op_id, (Tombstoned(rid=rid, attempt=attempt, reason="settled_before_reserve"),))
    hold = target
    # A hold still awaiting approval is charged too: a settle means the provider was called and paid.
    charged, uncollectible = settle_split(hold.amount_msat, cost, state.available_msat)
    return Decided(op_id, (Settled(rid=rid, attempt=hold.attempt, cost_msat=cost, charged_msat=charged,
                                   uncollectible_msat=uncollectible, input_tokens=input_tokens,
                                   output_tokens=output_tokens, provider=provider or hold.provider,
                                   model=model or hold.model, estimated=estimated,
                                   provider_cost_msat=provider_cost_msat, cost_drift=cost_drift),))


def release(state: AccountState, rid: str, reason: str, now_ms: int, attempt: str = "") -> Decided:
    """Return a hold's funds. An attempt never reserved is tombstoned so its reserve, if it comes, is refused."""
    require_agent(state)
    op_id = op_name("release", rid, attempt)
    target = _target(state, op_id, rid, attempt)
    if isinstance(target, Decided):
        return target
    if target is None:
        return Decided(op_id, (Tombstoned(rid=rid, attempt=attempt, reason=reason or "released_before_reserve"),))
    return Decided(op_id, (Released(rid=rid, attempt=target.attempt, reason=reason),))


def expire(state: AccountState, rid: str, now_ms: int, action: ExpiryAction = "charge") -> Decided:
    """Resolve the rid's open hold past its TTL: charge it (the provider was probably paid) or release it.

    A hold still awaiting approval past its deadline is denied instead. A hold not yet due is 409 ``not_expired``.
    Timers name rids, not attempts: an old timer finding a newer attempt's hold finds it not due.
    """
    require_agent(state)
    hold = state.holds.get(rid)
    op_id = op_name("expire", rid, hold.attempt if hold is not None else "")
    target = _target(state, op_id, rid, "")
    if isinstance(target, Decided):
        return target
    if target is None:
        return Decided(op_id, (Tombstoned(rid=rid, reason="expired_before_reserve"),))
    hold = target
    if hold.state == "awaiting_approval":
        assert hold.approval_deadline_ms is not None
        if hold.approval_deadline_ms <= now_ms:
            return Decided(op_id, (Denied(rid=rid, attempt=hold.attempt, reason=APPROVAL_TIMEOUT),))
        raise ArbstrError(409, f"request {rid} awaits approval until {hold.approval_deadline_ms}",
                          code="not_expired")
    if hold.expires_at_ms > now_ms:
        raise ArbstrError(409, f"request {rid} expires at {hold.expires_at_ms}", code="not_expired")
    charged = hold.amount_msat if action == "charge" else 0
    return Decided(op_id, (Expired(rid=rid, attempt=hold.attempt, action=action, charged_msat=charged),))


def already_decided(rid: str, how: str) -> ArbstrError:
    return ArbstrError(409, f"request {rid} was already {how}", code="already_decided", param="request_id")


def _awaiting(state: AccountState, kind: str, rid: str) -> Union[Decided, Hold]:
    """The hold an approval or denial of ``rid`` acts on, the no-op of its own repeat, or a 404/409.

    Deciding one already decided is a 409, never a quiet success: an operator must not believe a click did
    something it did not (the actor tells its own retried write apart by the ``duplicate`` no-op)."""
    hold = state.holds.get(rid)
    if hold is None:
        res = state.resolutions.get(rid)
        if res is not None:
            if res.hold.approval_deadline_ms is None:
                raise ArbstrError(409, f"request {rid} is not awaiting approval", code="not_awaiting_approval")
            raise already_decided(rid, "denied" if res.kind == "denied" else f"approved and {res.kind}")
        raise ArbstrError(404, f"no reservation {rid}", code="unknown_request")
    op_id = op_name(kind, rid, hold.attempt)
    if op_id in state.op_ids:
        return Decided(op_id, noop="duplicate")
    if hold.state != "awaiting_approval":
        if hold.approval_deadline_ms is None:
            raise ArbstrError(409, f"request {rid} is not awaiting approval", code="not_awaiting_approval")
        raise already_decided(rid, "approved")
    return hold


def approve(state: AccountState, rid: str, now_ms: int) -> Decided:
    """Let a held spend proceed. An approval that comes after the deadline denies instead: the timeout won."""
    require_agent(state)
    hold = _awaiting(state, "approve", rid)
    if isinstance(hold, Decided):
        return hold
    op_id = op_name("approve", rid, hold.attempt)
    assert hold.approval_deadline_ms is not None
    if now_ms >= hold.approval_deadline_ms:
        return Decided(op_id, (Denied(rid=rid, attempt=hold.attempt, reason=APPROVAL_TIMEOUT),))
    return Decided(op_id, (Approved(rid=rid, attempt=hold.attempt),))


def deny(state: AccountState, rid: str, reason: str, now_ms: int) -> Decided:
    require_agent(state)
    hold = _awaiting(state, "deny", rid)
    if isinstance(hold, Decided):
        return hold
    return Decided(op_name("deny", rid, hold.attempt), (Denied(rid=rid, attempt=hold.attempt,
                                                               reason=reason or "denied"),))


def extend(state: AccountState, rid: str, amount_msat: int, now_ms: int, attempt: int = 1) -> Decided:
    """Grow a held reservation to ``amount_msat`` (a costlier candidate is about to be called), or refuse as a
    reserve of that size would be refused (402, 403, 429). Already as large: nothing to do. ``attempt`` numbers the
    extensions of one request, so a repeat of the same one is a no-op."""
    require_agent(state)
    hold = state.holds.get(rid)
    if hold is None:
        raise ArbstrError(409, f"request {rid} holds nothing to extend", code="request_resolved")
    op_id = f"{op_name('extend', rid, hold.attempt)}:{attempt}"  # the extensions of this hold, numbered
    if op_id in state.op_ids:
        return Decided(op_id, noop="duplicate")
    if hold.state != "held":
        raise ArbstrError(409, f"request {rid} awaits approval", code="not_held")
    if amount_msat <= hold.amount_msat:
        return Decided(op_id, noop="duplicate")
    extra = amount_msat - hold.amount_msat
    if extra > state.available_msat:
        raise insufficient(extra, state.available_msat)
    policy = state.policy
    if policy.max_tx_msat is not None and amount_msat > policy.max_tx_msat:
        raise ArbstrError(403, f"{amount_msat} msat exceeds the agent's max per transaction", code="max_tx_exceeded")
    if policy.approval_over_msat is not None and amount_msat > policy.approval_over_msat:
        raise ArbstrError(403, "a larger hold would need approval", code="approval_required")
    decision = check(policy, state, extra, now_ms)
    if not decision.allowed:
        raise decision.error()
    return Decided(op_id, (HoldExtended(rid=rid, amount_msat=amount_msat),))
