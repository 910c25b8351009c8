"""Deciders of grants (credit control, RFC 4006 style). Pure, like every decider (see ``decide``).

A grant is a slice of an agent's balance held for one gateway: an ordinary hold (rid ``~grant:<id>``, so its
expiry, the books and the daily limit treat it like any hold). The gateway decides requests against it locally
and reports them in batches; each reported request becomes one command here — a GrantDrawn that moves its cost
out of the grant into a hold of the request's own rid, and the Settled (or Released) that closes that hold. So a
request served under a grant leaves the same resolution, spend event and request record as a reserved one, and
its rid is used up (or reusable) exactly as it would be. What the grant still holds goes back to the balance when
the gateway closes it; a grant its gateway never closes expires like any hold (charged and flagged by default).
"""

from __future__ import annotations

from typing import Optional

from schemas.errors import ArbstrError
from schemas.ledger import GrantDrawn, Released, Reserved, Settled, Tombstoned

from .decide_holds import _reuse_refusal, op_name, settle_split
from .decided import Decided, insufficient, require_agent
from .fold import GRANT_PREFIX, AccountState, Hold
from .policy import daily_headroom_msat


def grant_rid(grant_id: str) -> str:
    return f"{GRANT_PREFIX}{grant_id}"


def open_grant(state: AccountState, grant_id: str, want_msat: int, min_msat: int, now_ms: int, *,
               ttl_ms: int) -> Decided:
    """Hold up to ``want_msat`` for a gateway: no more than is available and the daily limit leaves (a grant is
    pending spend, so the limit counts it). Refused (402/429) when not even ``min_msat`` fits."""
    require_agent(state)
    rid = grant_rid(grant_id)
    op_id = op_name("grant", rid)
    if op_id in state.op_ids:
        return Decided(op_id, noop="duplicate")
    if rid in state.holds or rid in state.resolutions:
        raise ArbstrError(409, f"grant {grant_id} was already used", code="grant_reused")
    if state.tombstoned(rid, ""):
        # Its gateway gave it up before it came (its request timed out there): never opened, so never orphaned.
        raise ArbstrError(409, f"grant {grant_id} was closed before it was opened", code="grant_closed")
    # At most half of what is available (but never less than the request needs): another gateway serving the same
    # agent then still finds money for its own grant or reserve, instead of a 402 while this grant sits idle.
    amount = min(want_msat, state.available_msat, max(min_msat, state.available_msat // 2))
    headroom = daily_headroom_msat(state.policy, state, now_ms)
    if headroom is not None:
        amount = min(amount, headroom)
        if amount < min_msat and headroom < min_msat <= state.available_msat:
            raise ArbstrError(429, "the daily limit leaves no room for a grant", code="daily_limit_exceeded")
    if amount < max(1, min_msat):
        raise insufficient(max(1, min_msat), state.available_msat)
    return Decided(op_id, (Reserved(rid=rid, amount_msat=amount, output_tokens=0, expires_at_ms=now_ms + ttl_ms,
                                    state="held"),))


def _charged_rid(state: AccountState, rid: str, attempt: str) -> str:
    """The rid a reported request is journaled under: its own, unless the agent already used it (a request id
    reused across gateways, which none of them could see): then a rid of its own, so it is still charged."""
    if _reuse_refusal(state, rid, attempt) is None and not state.reserved(rid, attempt):
        return rid
    return f"{rid}~{attempt}"


def _open_grant_hold(state: AccountState, grant_id: str) -> Optional[Hold]:
    """The grant, still open; None when it ended. A grant this agent never had is refused: nothing is charged to an
    account on a gateway's word alone."""
    rid = grant_rid(grant_id)
    if rid not in state.holds and rid not in state.resolutions:
        raise ArbstrError(409, f"agent {state.agent_id} has no grant {grant_id}", code="unknown_grant")
    return state.holds.get(rid)


def draw_settle(state: AccountState, grant_id: str, rid: str, attempt: str, cost: int, now_ms: int, *,
                input_tokens: int = 0, output_tokens: int = 0, provider: str = "", model: str = "",
                estimated: bool = False, provider_cost_msat: Optional[int] = None,
                cost_drift: bool = False) -> Decided:
    """A request served under a grant: its cost drawn from the grant (an overrun from available, the rest
    uncollectible, as a settle does), then settled. A report delivered twice decides nothing the second time."""
    require_agent(state)
    op_id = op_name("gsettle", rid, attempt)
    if op_id in state.op_ids:
        return Decided(op_id, noop="duplicate")
    if not isinstance(cost, int) or isinstance(cost, bool) or cost < 0:
        raise ArbstrError(400, "cost must be a non-negative integer of millisats", code="invalid_amount",
                          param="cost_msat")
    grant = _open_grant_hold(state, grant_id)
    drawn = min(cost, grant.amount_msat) if grant is not None else 0
    charged_rid = _charged_rid(state, rid, attempt)
    charged, uncollectible = settle_split(drawn, cost, state.available_msat)
    settled = Settled(rid=charged_rid, attempt=attempt, cost_msat=cost, charged_msat=charged,
                      uncollectible_msat=uncollectible, input_tokens=input_tokens, output_tokens=output_tokens,
                      provider=provider, model=model, estimated=estimated, provider_cost_msat=provider_cost_msat,
                      cost_drift=cost_drift)
    if grant is None:
        ended = state.resolutions.get(grant_rid(grant_id))
        if ended is not None and ended.kind == "expired" and ended.charged_msat > 0:
            # Its expiry charged what the grant still held, which is at least what the gateway decided under it
            # and had not reported: the request is recorded, covered by that charge, and not charged twice.
            settled = Settled(rid=charged_rid, attempt=attempt, cost_msat=cost, charged_msat=0,
                              uncollectible_msat=0, input_tokens=input_tokens, output_tokens=output_tokens,
                              provider=provider, model=model, estimated=estimated,
                              provider_cost_msat=provider_cost_msat, cost_drift=cost_drift,
                              covered_by=ended.hold.rid)
        # Else the grant was given back while this report was on its way: the request was served, so it is still
        # charged, from available (what is not there is recorded as uncollectible).
        return Decided(op_id, (*_bare_hold(charged_rid, attempt, provider, model, now_ms), settled))
    return Decided(op_id, (GrantDrawn(grant=grant.rid, rid=charged_rid, attempt=attempt, amount_msat=drawn,
                                      provider=provider, model=model), settled))


def draw_release(state: AccountState, grant_id: str, rid: str, attempt: str, reason: str, now_ms: int) -> Decided:
    """A request that failed under a grant: nothing charged, its record kept (its rid stays reusable)."""
    require_agent(state)
    op_id = op_name("grelease", rid, attempt)
    if op_id in state.op_ids:
        return Decided(op_id, noop="duplicate")
    grant = _open_grant_hold(state, grant_id)
    charged_rid = _charged_rid(state, rid, attempt)
    released = Released(rid=charged_rid, attempt=attempt, reason=reason)
    if grant is None:
        return Decided(op_id, (*_bare_hold(charged_rid, attempt, "", "", now_ms), released))
    return Decided(op_id, (GrantDrawn(grant=grant.rid, rid=charged_rid, attempt=attempt, amount_msat=0), released))


def _bare_hold(rid: str, attempt: str, provider: str, model: str, now_ms: int) -> tuple[Reserved]:
    return (Reserved(rid=rid, attempt=attempt, amount_msat=0, output_tokens=0, expires_at_ms=now_ms,
                     provider=provider, model=model, state="held"),)


def close_grant(state: AccountState, grant_id: str, now_ms: int) -> Decided:
    """What the grant still holds goes back to the balance (a grant already closed or expired: nothing)."""
    require_agent(state)
    rid = grant_rid(grant_id)
    op_id = op_name("gclose", rid)
    if op_id in state.op_ids or rid in state.resolutions or state.tombstoned(rid, ""):
        return Decided(op_id, noop="resolved")
    if rid not in state.holds:
        # A grant its gateway asked for and gave up on (the answer did not come): should the request still be
        # delivered, it is refused, instead of holding money nobody will use until it expires charged.
        return Decided(op_id, (Tombstoned(rid=rid, reason="grant closed before it was opened"),))
    return Decided(op_id, (Released(rid=rid, reason="grant closed"),))
