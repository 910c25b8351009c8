"""An agent's account as the fold of its journal: state, evolve (one event), fold (all of them), view.

Two-phase transfers as in TigerBeetle: a reservation is a pending hold that resolves at most once (settled,
released, expired or denied); a settle never takes more than the hold plus what is available. ``evolve``
refuses any event that would break the books, so the journal writer can check an event before writing it.

Books: ``deposited - withdrawn == available + pending + payout_pending + spent`` and ``available >= 0`` after
every event. A payout holds its amount plus its fee limit from the moment it is journaled (before the rail is
called) until it settles (amount + actual fee become withdrawn, the rest returns) or definitely fails.
Uncollectible overruns are recorded apart: they were never charged, so they are not in the books.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Literal, Optional, Sequence

from schemas.ledger import (
    AgentCreated,
    Approved,
    Denied,
    Deposited,
    EventBody,
    Expired,
    GrantDrawn,
    HoldExtended,
    InvoiceIssued,
    LedgerEvent,
    PayoutApproved,
    PayoutFailed,
    ProviderPaymentClosed,
    PayoutRerouted,
    PayoutSettled,
    PayoutStarted,
    PolicySet,
    Released,
    Reserved,
    Settled,
    Tombstoned,
    TokenRotated,
    Withdrawn,
    event_hash,
)
from schemas.vault import AccountView, AgentPolicy

DAY_MS = 86_400_000
# A request id is remembered this long after it resolves (and a tombstone after it is laid): long enough to
# recognise a duplicate settle or refuse a late reserve (the vault refuses reserves sent longer ago than
# ``decide.RESERVE_MAX_AGE_MS``, well inside this), short enough that memory does not grow with history.
# A constant of the fold, not a setting: a replay must forget exactly what the live fold forgot.
FORGET_AFTER_MS = 600_000
_RID_OPS = ("reserve", "settle", "release", "expire", "approve", "deny")
# Charges are summed per minute so the daily window stays ~1,440 entries however busy the agent is. A bucket
# counts until 24 h after its minute *ends*: charges may count up to a minute longer, never shorter.
WINDOW_BUCKET_MS = 60_000

HoldState = Literal["held", "awaiting_approval"]
ResolutionKind = Literal["settled", "released", "expired", "denied"]


GRANT_PREFIX = "~grant:"  # a gateway's grant: the hold requests are drawn from ("~" starts no request id)


class LedgerViolation(ValueError):
    """An event that would break the chain or the books: it must not be written (or, if read, trusted)."""


@dataclass(frozen=True, slots=True)
class Hold:
    rid: str
    amount_msat: int
    output_tokens: int
    expires_at_ms: int
    provider: str
    model: str
    state: HoldState
    approval_deadline_ms: Optional[int]
    reserved_at_ms: int
    attempt: str = ""  # the gateway's nonce of the reserve that made it ("" in older journals)
    earlier_attempts: tuple[str, ...] = ()  # attempts of this rid reserved and released before this one

    def reserved(self, attempt: str) -> bool:
        """Whether ``attempt`` of this rid was reserved: this hold's or one released before it."""
        return attempt == self.attempt or attempt in self.earlier_attempts


@dataclass(frozen=True, slots=True)
class Resolution:
    """How a hold ended. ``hold`` is the hold as it was, so a repeated reserve can still describe it."""

    kind: ResolutionKind
    hold: Hold
    charged_msat: int
    uncollectible_msat: int
    cost_msat: int
    reason: str
    at_ms: int
    seq: int

    @property
    def reusable(self) -> bool:
        """Nothing was charged and the upstream was not paid for it: the rid may be reserved again (a failed
        request's retry keeps its X-Request-Id). A settle (even of 0) or a charged expiry uses it up for good."""
        return self.kind in ("released", "denied") or (self.kind == "expired" and self.charged_msat == 0)


@dataclass(frozen=True, slots=True)
class Payout:
    payout_id: str
    amount_msat: int
    fee_limit_msat: int
    rail: str
    reference: str
    destination: str
    started_at_ms: int
    initial_rail: str = ""  # the rail first tried; differs from ``rail`` after the auto rail's fallback
    fallback: bool = False
    wallet: str = ""  # the identity of the wallet that pays it ("" in journals older than the field)
    approval_deadline_ms: Optional[int] = None  # set while it waits for a human: held, never sent
    payout_key: str = ""  # the agent's idempotency key for it, if it gave one

    @property
    def held_msat(self) -> int:
        return self.amount_msat + self.fee_limit_msat


@dataclass(frozen=True, slots=True)
class PayoutEnd:
    kind: Literal["settled", "failed"]
    payout: Payout
    charged_msat: int
    fee_msat: int
    reason: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class Invoice:
    deposit_id: str
    amount_msat: int
    rail: str
    reference: str
    bolt11: str
    expires_at_ms: int


# A Lightning deposit's reference carries the node's settle index: the journaled cursor of the invoice feed.
SETTLE_INDEX_PREFIX = "settle_index="


def settle_index_of(reference: str) -> int:
    if reference.startswith(SETTLE_INDEX_PREFIX) and reference[len(SETTLE_INDEX_PREFIX):].isdigit():
        return int(reference[len(SETTLE_INDEX_PREFIX):])
    return 0


@dataclass
class AccountState:
    """Plain data. ``evolve`` returns a fresh copy; ``apply_event`` updates in place (for folds and writers)."""

    agent_id: str
    created: bool = False
    name: str = ""
    token_hash: str = ""
    policy: AgentPolicy = field(default_factory=AgentPolicy)
    created_at_ms: int = 0
    policy_version: int = 0
    token_version: int = 0
    deposited_msat: int = 0
    withdrawn_msat: int = 0
    spent_msat: int = 0
    uncollectible_msat: int = 0
    available_msat: int = 0
    pending_msat: int = 0
    payout_pending_msat: int = 0
    holds: dict[str, Hold] = field(default_factory=dict)  # the open hold of each rid (at most one at a time)
    resolutions: dict[str, Resolution] = field(default_factory=dict)  # how each rid's latest hold ended
    # rid -> {attempt: reason} of releases/settles that came before their reserve ("" refuses every attempt)
    tombstones: dict[str, dict[str, str]] = field(default_factory=dict)
    tombstoned_at: dict[str, int] = field(default_factory=dict)  # rid -> when its latest tombstone was laid
    deposits: dict[str, int] = field(default_factory=dict)
    withdrawals: dict[str, int] = field(default_factory=dict)
    payouts: dict[str, Payout] = field(default_factory=dict)  # open: journaled, not yet resolved
    payouts_done: dict[str, PayoutEnd] = field(default_factory=dict)
    payout_keys: dict[str, str] = field(default_factory=dict)  # idempotency key -> the payout it names
    invoices: dict[str, Invoice] = field(default_factory=dict)  # by deposit_id
    # Per-request provider payments (X-Cashu tokens) accounted for: payout id -> (outcome, change msat).
    provider_payments: dict[str, tuple[str, int]] = field(default_factory=dict)
    settle_index: int = 0  # highest Lightning settle index credited to this agent
    # op_id -> (first seq, last seq) of the events it produced; kept forever, unlike the stream's dedup window.
    op_ids: dict[str, tuple[int, int]] = field(default_factory=dict)
    # (bucket end ms, msat) of charges, for the rolling daily limit.
    window: list[tuple[int, int]] = field(default_factory=list)
    seq: int = 0
    last_hash: str = ""
    last_op_id: str = ""

    def copy(self) -> "AccountState":
        # Holds, resolutions and the policy are immutable by convention, so sharing them is safe.
        return AccountState(
            agent_id=self.agent_id, created=self.created, name=self.name, token_hash=self.token_hash,
            policy=self.policy, created_at_ms=self.created_at_ms, policy_version=self.policy_version,
            token_version=self.token_version, deposited_msat=self.deposited_msat,
            withdrawn_msat=self.withdrawn_msat, spent_msat=self.spent_msat,
            uncollectible_msat=self.uncollectible_msat, available_msat=self.available_msat,
            pending_msat=self.pending_msat, payout_pending_msat=self.payout_pending_msat, holds=dict(self.holds), resolutions=dict(self.resolutions),
            tombstones={rid: dict(t) for rid, t in self.tombstones.items()},
            tombstoned_at=dict(self.tombstoned_at), deposits=dict(self.deposits),
            withdrawals=dict(self.withdrawals), payouts=dict(self.payouts), payouts_done=dict(self.payouts_done),
            payout_keys=dict(self.payout_keys), invoices=dict(self.invoices),
            provider_payments=dict(self.provider_payments),
            settle_index=self.settle_index, op_ids=dict(self.op_ids), window=list(self.window), seq=self.seq, last_hash=self.last_hash,
            last_op_id=self.last_op_id,
        )

    def knows(self, rid: str) -> bool:
        """Whether ``rid`` was ever reserved or tombstoned here."""
        return rid in self.holds or rid in self.resolutions or rid in self.tombstones

    def reserved(self, rid: str, attempt: str) -> bool:
        """Whether ``attempt`` of ``rid`` was ever reserved (open now, or resolved)."""
        hold = self.holds.get(rid)
        if hold is not None and hold.reserved(attempt):
            return True
        res = self.resolutions.get(rid)
        return res is not None and res.hold.reserved(attempt)

    def tombstoned(self, rid: str, attempt: str) -> bool:
        """Whether a reserve of ``attempt`` is refused: that attempt was released before its reserve came, or the
        rid was released by a caller naming no attempt."""
        marks = self.tombstones.get(rid)
        return marks is not None and ("" in marks or attempt in marks)


def check_invariants(state: AccountState) -> None:
    """Raise ``LedgerViolation`` unless the books balance. Cheap: O(open holds)."""
    counters = (state.deposited_msat, state.withdrawn_msat, state.spent_msat, state.uncollectible_msat,
                state.available_msat, state.pending_msat, state.payout_pending_msat)
    if any(c < 0 for c in counters):
        raise LedgerViolation(f"negative counter in {counters}")
    if state.deposited_msat - state.withdrawn_msat != (state.available_msat + state.pending_msat
                                                       + state.payout_pending_msat + state.spent_msat):
        raise LedgerViolation(
            f"books do not balance: deposited {state.deposited_msat} - withdrawn {state.withdrawn_msat} != "
            f"available {state.available_msat} + pending {state.pending_msat} + payouts pending "
            f"{state.payout_pending_msat} + spent {state.spent_msat}")
    held = sum(h.amount_msat for h in state.holds.values())
    if held != state.pending_msat:
        raise LedgerViolation(f"pending {state.pending_msat} != sum of holds {held}")
    paying = sum(p.held_msat for p in state.payouts.values())
    if paying != state.payout_pending_msat:
        raise LedgerViolation(f"payouts pending {state.payout_pending_msat} != sum of open payouts {paying}")


def _fail(event: LedgerEvent, why: str) -> LedgerViolation:
    return LedgerViolation(f"{event.agent_id} seq {event.seq} ({event.op_id}, {event.body.kind}): {why}")


def _check_envelope(state: AccountState, event: LedgerEvent, chained: bool) -> None:
    if event.agent_id != state.agent_id:
        raise _fail(event, f"belongs to another agent than {state.agent_id}")
    if event.seq != state.seq + 1:
        raise _fail(event, f"expected seq {state.seq + 1}")
    if chained and event.prev_hash != state.last_hash:
        raise _fail(event, "prev_hash does not match the previous event")
    if not chained and event.prev_hash:
        raise _fail(event, "an event of a batch is chained by its batch, not by prev_hash")
    # The events of one command are contiguous, share its op_id and count up in ``part``: anything else
    # carrying a known op_id is a replay.
    if event.op_id in state.op_ids:
        first, last = state.op_ids[event.op_id]
        if not (event.op_id == state.last_op_id and event.part == last - first + 1):
            raise _fail(event, "op_id already applied")
    elif event.part != 0:
        raise _fail(event, "part of a command whose first event is missing")
    if isinstance(event.body, AgentCreated):
        if state.created:
            raise _fail(event, "agent already exists")
    elif not state.created:
        raise _fail(event, "agent does not exist yet")


def _open_hold(state: AccountState, event: LedgerEvent, rid: str) -> Hold:
    hold = state.holds.get(rid)
    if hold is None:
        done = "already resolved" if rid in state.resolutions else "unknown"
        raise _fail(event, f"hold {rid} is {done}")
    attempt = getattr(event.body, "attempt", "")
    if attempt and attempt != hold.attempt:
        raise _fail(event, f"hold {rid} is attempt {hold.attempt!r}, not {attempt!r}")
    return hold


def _earlier_attempts(state: AccountState, event: LedgerEvent, rid: str, attempt: str) -> tuple[str, ...]:
    """The attempts of ``rid`` before this reserve; refuses a reserve the rid's history does not allow."""
    if rid in state.holds:
        raise _fail(event, f"rid {rid} already has an open hold")
    if state.tombstoned(rid, attempt):
        raise _fail(event, f"rid {rid} attempt {attempt!r} was tombstoned")
    res = state.resolutions.get(rid)
    if res is None:
        return ()
    if not res.reusable:
        raise _fail(event, f"rid {rid} was {res.kind} with a charge: it cannot be reserved again")
    if res.hold.reserved(attempt):
        raise _fail(event, f"rid {rid} attempt {attempt!r} was reserved before")
    return res.hold.earlier_attempts + (res.hold.attempt,)


def _open_payout(state: AccountState, event: LedgerEvent, payout_id: str) -> Payout:
    payout = state.payouts.get(payout_id)
    if payout is None:
        done = "already resolved" if payout_id in state.payouts_done else "unknown"
        raise _fail(event, f"payout {payout_id} is {done}")
    return payout


def _resolve(state: AccountState, event: LedgerEvent, hold: Hold, kind: ResolutionKind, *, charged: int = 0,
             uncollectible: int = 0, cost: int = 0, reason: str = "") -> None:
    """Close a hold: ``charged`` leaves the account (from the hold first, any overage from available)."""
    available = state.available_msat + hold.amount_msat - charged
    if available < 0:
        raise _fail(event, f"charging {charged} overdraws the account")
    del state.holds[hold.rid]
    state.pending_msat -= hold.amount_msat
    state.available_msat = available
    state.spent_msat += charged
    state.uncollectible_msat += uncollectible
    state.resolutions.pop(hold.rid, None)  # a reused rid's new resolution goes last: forgetting walks in time order
    state.resolutions[hold.rid] = Resolution(kind=kind, hold=hold, charged_msat=charged,
                                             uncollectible_msat=uncollectible, cost_msat=cost, reason=reason,
                                             at_ms=event.at_ms, seq=event.seq)
    _charge(state, event.at_ms, charged)


def _charge(state: AccountState, at_ms: int, msat: int) -> None:
    if msat == 0:
        return
    window = state.window
    # Entries arrive roughly in time order; dropping from the front keeps this O(1) amortised.
    drop = 0
    while drop < len(window) and window[drop][0] + DAY_MS <= at_ms:
        drop += 1
    if drop:
        del window[:drop]
    end = (at_ms // WINDOW_BUCKET_MS + 1) * WINDOW_BUCKET_MS
    if window and window[-1][0] == end:
        window[-1] = (end, window[-1][1] + msat)
    else:
        window.append((end, msat))


def _apply_body(state: AccountState, event: LedgerEvent, body: EventBody) -> None:
    # Every branch checks everything before it changes anything: a refused event leaves the state untouched.
    if isinstance(body, AgentCreated):
        state.created = True
        state.name = body.name
        state.token_hash = body.token_hash
        state.policy = AgentPolicy.within_bounds(body.policy)
        state.created_at_ms = event.at_ms
    elif isinstance(body, TokenRotated):
        state.token_hash = body.token_hash
        state.token_version += 1
    elif isinstance(body, PolicySet):
        state.policy = AgentPolicy.within_bounds(body.policy)
        state.policy_version += 1
    elif isinstance(body, Deposited):
        if body.deposit_id in state.deposits:
            raise _fail(event, f"deposit {body.deposit_id} already credited")
        state.deposits[body.deposit_id] = body.amount_msat
        state.deposited_msat += body.amount_msat
        state.available_msat += body.amount_msat
        state.settle_index = max(state.settle_index, settle_index_of(body.reference))
    elif isinstance(body, Withdrawn):
        if body.withdrawal_id in state.withdrawals:
            raise _fail(event, f"withdrawal {body.withdrawal_id} already debited")
        if body.amount_msat > state.available_msat:
            raise _fail(event, f"withdrawing {body.amount_msat} exceeds available {state.available_msat}")
        state.withdrawals[body.withdrawal_id] = body.amount_msat
        state.withdrawn_msat += body.amount_msat
        state.available_msat -= body.amount_msat
        _charge(state, event.at_ms, body.amount_msat)
    elif isinstance(body, Reserved):
        earlier = _earlier_attempts(state, event, body.rid, body.attempt)
        if body.amount_msat > state.available_msat:
            raise _fail(event, f"hold of {body.amount_msat} exceeds available {state.available_msat}")
        state.holds[body.rid] = Hold(rid=body.rid, amount_msat=body.amount_msat, output_tokens=body.output_tokens,
                                     expires_at_ms=body.expires_at_ms, provider=body.provider, model=body.model,
                                     state=body.state, approval_deadline_ms=body.approval_deadline_ms,
                                     reserved_at_ms=event.at_ms, attempt=body.attempt, earlier_attempts=earlier)
        state.available_msat -= body.amount_msat
        state.pending_msat += body.amount_msat
    elif isinstance(body, HoldExtended):
        hold = _open_hold(state, event, body.rid)
        extra = body.amount_msat - hold.amount_msat
        if extra <= 0:
            raise _fail(event, f"hold {body.rid} of {hold.amount_msat} cannot shrink to {body.amount_msat}")
        if extra > state.available_msat:
            raise _fail(event, f"extending hold {body.rid} by {extra} exceeds available {state.available_msat}")
        state.holds[body.rid] = replace(hold, amount_msat=body.amount_msat)
        state.available_msat -= extra
        state.pending_msat += extra
    elif isinstance(body, GrantDrawn):
        grant = state.holds.get(body.grant)  # the attempt named is the request's, not the grant's
        if grant is None:
            raise _fail(event, f"grant {body.grant} is not open")
        if not body.grant.startswith(GRANT_PREFIX) or body.rid.startswith(GRANT_PREFIX):
            raise _fail(event, f"{body.rid} cannot be drawn from {body.grant}")
        if grant.state != "held":
            raise _fail(event, f"grant {body.grant} is not held")
        if body.amount_msat > grant.amount_msat:
            raise _fail(event, f"drawing {body.amount_msat} exceeds grant {body.grant} of {grant.amount_msat}")
        earlier = _earlier_attempts(state, event, body.rid, body.attempt)
        state.holds[body.grant] = replace(grant, amount_msat=grant.amount_msat - body.amount_msat)
        state.holds[body.rid] = Hold(rid=body.rid, amount_msat=body.amount_msat, output_tokens=0,
                                     expires_at_ms=grant.expires_at_ms, provider=body.provider, model=body.model,
                                     state="held", approval_deadline_ms=None, reserved_at_ms=event.at_ms,
                                     attempt=body.attempt, earlier_attempts=earlier)
    elif isinstance(body, Approved):
        hold = _open_hold(state, event, body.rid)
        if hold.state != "awaiting_approval":
            raise _fail(event, f"hold {body.rid} is not awaiting approval")
        if hold.approval_deadline_ms is not None and event.at_ms >= hold.approval_deadline_ms:
            raise _fail(event, "approved after the deadline: the timeout already denied it")
        state.holds[body.rid] = replace(hold, state="held")
    elif isinstance(body, Denied):
        hold = _open_hold(state, event, body.rid)
        if hold.state != "awaiting_approval":
            raise _fail(event, f"hold {body.rid} is not awaiting approval")
        _resolve(state, event, hold, "denied", reason=body.reason)
    elif isinstance(body, Settled):
        hold = _open_hold(state, event, body.rid)
        collectible = hold.amount_msat + state.available_msat
        if body.charged_msat > collectible:
            raise _fail(event, f"charging {body.charged_msat} exceeds hold + available {collectible}")
        if body.uncollectible_msat and body.charged_msat != collectible:
            raise _fail(event, "records an overrun as uncollectible while funds remain available")
        _resolve(state, event, hold, "settled", charged=body.charged_msat, uncollectible=body.uncollectible_msat,
                 cost=body.cost_msat)
    elif isinstance(body, Released):
        hold = _open_hold(state, event, body.rid)
        _resolve(state, event, hold, "released", reason=body.reason)
    elif isinstance(body, Expired):
        hold = _open_hold(state, event, body.rid)
        if hold.state != "held":
            raise _fail(event, f"hold {body.rid} awaits approval: it times out by denial, not expiry")
        if event.at_ms < hold.expires_at_ms:
            raise _fail(event, f"hold {body.rid} expires at {hold.expires_at_ms}, not before")
        expected = hold.amount_msat if body.action == "charge" else 0
        if body.charged_msat != expected:
            raise _fail(event, f"expiry with action {body.action} must charge {expected}")
        _resolve(state, event, hold, "expired", charged=body.charged_msat, cost=body.charged_msat,
                 reason=body.action)
    elif isinstance(body, Tombstoned):
        if body.attempt in state.tombstones.get(body.rid, {}):
            raise _fail(event, f"rid {body.rid} attempt {body.attempt!r} is already tombstoned")
        # Naming no attempt, a release stands for the whole rid: only a rid never reserved is tombstoned that way.
        known = (body.rid in state.holds or body.rid in state.resolutions) if body.attempt == "" \
            else state.reserved(body.rid, body.attempt)
        if known:
            raise _fail(event, f"rid {body.rid} attempt {body.attempt!r} is known: only unknown ones are tombstoned")
        state.tombstones.setdefault(body.rid, {})[body.attempt] = body.reason
        state.tombstoned_at.pop(body.rid, None)  # re-laid: moves to the end, where forgetting reaches it last
        state.tombstoned_at[body.rid] = event.at_ms
    elif isinstance(body, InvoiceIssued):
        if body.deposit_id in state.invoices or body.deposit_id in state.deposits:
            raise _fail(event, f"deposit {body.deposit_id} already exists")
        state.invoices[body.deposit_id] = Invoice(
            deposit_id=body.deposit_id, amount_msat=body.amount_msat, rail=body.rail, reference=body.reference,
            bolt11=body.bolt11, expires_at_ms=body.expires_at_ms)
    elif isinstance(body, PayoutStarted):
        if body.payout_id in state.payouts or body.payout_id in state.payouts_done:
            raise _fail(event, f"payout {body.payout_id} already exists")
        payout = Payout(payout_id=body.payout_id, amount_msat=body.amount_msat, fee_limit_msat=body.fee_limit_msat,
                        rail=body.rail, reference=body.reference, destination=body.destination,
                        started_at_ms=event.at_ms, initial_rail=body.rail, wallet=body.wallet,
                        approval_deadline_ms=body.approval_deadline_ms, payout_key=body.payout_key)
        if payout.held_msat > state.available_msat:
            raise _fail(event, f"payout of {payout.held_msat} exceeds available {state.available_msat}")
        if body.payout_key and body.payout_key in state.payout_keys:
            raise _fail(event, f"idempotency key {body.payout_key} already names payout "
                               f"{state.payout_keys[body.payout_key]}")
        state.payouts[body.payout_id] = payout
        if body.payout_key:
            state.payout_keys[body.payout_key] = body.payout_id
        state.available_msat -= payout.held_msat
        state.payout_pending_msat += payout.held_msat
    elif isinstance(body, PayoutApproved):
        payout = _open_payout(state, event, body.payout_id)
        if payout.approval_deadline_ms is None:
            raise _fail(event, f"payout {body.payout_id} was not waiting for approval")
        state.payouts[body.payout_id] = replace(payout, approval_deadline_ms=None)
    elif isinstance(body, PayoutRerouted):
        payout = _open_payout(state, event, body.payout_id)
        if payout.fallback or body.from_rail != payout.rail or body.rail == payout.rail:
            raise _fail(event, f"payout {body.payout_id} cannot move from {payout.rail} to {body.rail}")
        extra = body.fee_limit_msat - payout.fee_limit_msat
        if extra > state.available_msat:
            raise _fail(event, f"the new fee limit needs {extra} more than available {state.available_msat}")
        state.payouts[body.payout_id] = replace(payout, rail=body.rail, reference=body.reference,
                                                fee_limit_msat=body.fee_limit_msat, fallback=True,
                                                wallet=body.wallet)
        state.available_msat -= extra
        state.payout_pending_msat += extra
    elif isinstance(body, PayoutSettled):
        payout = _open_payout(state, event, body.payout_id)
        if body.fee_msat > payout.fee_limit_msat:
            raise _fail(event, f"fee {body.fee_msat} exceeds the limit {payout.fee_limit_msat}")
        if body.charged_msat != payout.amount_msat + body.fee_msat:
            raise _fail(event, "a settled payout charges its amount plus its fee")
        del state.payouts[body.payout_id]
        state.payout_pending_msat -= payout.held_msat
        state.available_msat += payout.held_msat - body.charged_msat
        state.withdrawn_msat += body.charged_msat
        state.payouts_done[body.payout_id] = PayoutEnd("settled", payout, body.charged_msat, body.fee_msat, "",
                                                       event.at_ms)
        _charge(state, event.at_ms, body.charged_msat)
    elif isinstance(body, PayoutFailed):
        payout = _open_payout(state, event, body.payout_id)
        del state.payouts[body.payout_id]
        state.payout_pending_msat -= payout.held_msat
        state.available_msat += payout.held_msat
        state.payouts_done[body.payout_id] = PayoutEnd("failed", payout, 0, 0, body.reason, event.at_ms)
    elif isinstance(body, ProviderPaymentClosed):
        done = state.payouts_done.get(body.payout_id)
        if done is None or done.kind != "settled":
            raise _fail(event, f"payout {body.payout_id} is not a paid-out token")
        if body.payout_id in state.provider_payments:
            raise _fail(event, f"payment {body.payout_id} was already closed")
        state.provider_payments[body.payout_id] = (body.outcome, body.change_msat)
    else:  # pragma: no cover - the union is closed; a new kind must be handled here
        raise _fail(event, "unknown event kind")


def apply_event(state: AccountState, event: LedgerEvent, chained: bool = True) -> None:
    """Apply one event to ``state`` in place, or raise ``LedgerViolation`` and leave it unchanged.

    ``chained``: a journal entry of its own, linked to the agent's previous event by ``prev_hash`` (journals
    written before batches); False for an event of a ``JournalBatch``, which the batch's own chain covers — so
    the hot path hashes once per batch, not once per event."""
    _check_envelope(state, event, chained)
    forget(state, event.at_ms - FORGET_AFTER_MS)
    _apply_body(state, event, event.body)
    first = state.op_ids.get(event.op_id, (event.seq, event.seq))[0]
    state.op_ids[event.op_id] = (first, event.seq)
    state.last_op_id = event.op_id
    state.seq = event.seq
    # A first event links nothing before it, so it may be either kind: its hash is kept for a chained successor.
    state.last_hash = event_hash(event) if chained or event.seq == 1 else ""
    check_invariants(state)


def forget(state: AccountState, before_ms: int) -> None:
    """Drop what ended before ``before_ms``: resolutions, tombstones and their op ids. Money is untouched (open
    holds stay until they resolve); deterministic in the events applied, so a replay forgets the same."""
    resolutions = state.resolutions
    while resolutions:
        rid, res = next(iter(resolutions.items()))
        if res.at_ms >= before_ms:
            break
        del resolutions[rid]
        if rid not in state.holds:  # a rid reused since keeps the op ids of its open attempt
            _forget_ops(state, rid, ("", res.hold.attempt, *res.hold.earlier_attempts))
    stones = state.tombstoned_at
    while stones:
        rid, at = next(iter(stones.items()))
        if at >= before_ms:
            break
        del stones[rid]
        attempts = tuple(state.tombstones.pop(rid, {}))
        if rid not in state.holds and rid not in state.resolutions:
            _forget_ops(state, rid, ("", *attempts))


def _forget_ops(state: AccountState, rid: str, attempts: tuple[str, ...]) -> None:
    """The op ids a rid's commands left: ``kind:rid`` and ``kind:rid#attempt``, and a hold's numbered extensions."""
    for attempt in set(attempts):
        for op in _RID_OPS:
            state.op_ids.pop(f"{op}:{rid}#{attempt}" if attempt else f"{op}:{rid}", None)
        extend = f"extend:{rid}#{attempt}" if attempt else f"extend:{rid}"
        n = 1
        while state.op_ids.pop(f"{extend}:{n}", None) is not None:
            n += 1


def evolve(state: AccountState, event: LedgerEvent) -> AccountState:
    """The state after ``event``; ``state`` itself is not changed. Copies: folds should use ``apply_event``."""
    nxt = state.copy()
    apply_event(nxt, event)
    return nxt


def fold(events: Iterable[LedgerEvent], agent_id: Optional[str] = None) -> AccountState:
    """Replay an agent's events from seq 1. ``agent_id`` is needed only when there may be no events."""
    state: Optional[AccountState] = None if agent_id is None else AccountState(agent_id=agent_id)
    for event in events:
        if state is None:
            state = AccountState(agent_id=event.agent_id)
        # Chained events link to the previous one; events of batches carry no link (their batch is chained).
        apply_event(state, event, chained=bool(event.prev_hash))
    if state is None:
        raise ValueError("fold of no events needs an agent_id")
    return state


def next_events(state: AccountState, op_id: str, bodies: Sequence[EventBody], now_ms: int,
                chained: bool = True) -> list[LedgerEvent]:
    """The journal events that would record ``bodies`` next: numbered after ``state`` (and, ``chained``, linked
    by ``prev_hash``; events of a batch are linked by their batch instead)."""
    events: list[LedgerEvent] = []
    seq, prev = state.seq, state.last_hash if chained else ""
    for part, body in enumerate(bodies):
        seq += 1
        event = LedgerEvent(op_id=op_id, agent_id=state.agent_id, seq=seq, part=part, at_ms=now_ms, prev_hash=prev,
                            body=body)
        if chained:
            prev = event_hash(event)
        events.append(event)
    return events


def granted_msat(state: AccountState) -> int:
    """What gateways hold in grants for the agent and no request has drawn yet: still the agent's to spend."""
    return sum(h.amount_msat for rid, h in state.holds.items() if rid.startswith(GRANT_PREFIX))


def view(state: AccountState) -> AccountView:
    return AccountView(
        agent_id=state.agent_id, name=state.name, balance_msat=state.available_msat,
        pending_msat=state.pending_msat + state.payout_pending_msat, payouts_pending_msat=state.payout_pending_msat, spent_msat=state.spent_msat, deposited_msat=state.deposited_msat,
        withdrawn_msat=state.withdrawn_msat, uncollectible_msat=state.uncollectible_msat, policy=state.policy,
        holds=len(state.holds), created_at_ms=state.created_at_ms,
    )
