"""The vault's pure core: journal events, evolve/fold, and every decider, without NATS."""

from __future__ import annotations

import itertools
from typing import Callable, Optional

import pytest
from pydantic import ValidationError

from actors.vault.decide import (
    Decided,
    Ledger,
    approve,
    create_agent,
    deny,
    deposit,
    expire,
    release,
    reserve,
    rotate_token,
    set_policy,
    settle,
    settle_split,
    withdraw,
)
from actors.vault.fold import (
    DAY_MS,
    AccountState,
    LedgerViolation,
    apply_event,
    check_invariants,
    evolve,
    fold,
    next_events,
    view,
)
from schemas.errors import ArbstrError
from schemas.ledger import (
    Deposited,
    JournalEntry,
    LedgerEvent,
    Released,
    Reserved,
    Settled,
    Tombstoned,
    Withdrawn,
    event_hash,
    verify_chain,
)
from schemas.router import Envelope
from schemas.vault import AgentPolicy

T0 = 1_700_000_000_000
TTL = 60_000
# 1,000,000 sats per 1M tokens = 1 sat = 1000 msat per token: amounts are easy to read.
RATE = 1_000_000


def env(out: Optional[int] = 10, *, inp: int = 0, fee: int = 0, max_out: int = 1000, out_rate: int = RATE) -> Envelope:
    return Envelope(input_tokens=inp, output_tokens=out, input_rate=RATE, output_rate=out_rate, base_fee_msat=fee,
                    max_output_tokens=max_out)


def funded(msat: int = 100_000, policy: Optional[AgentPolicy] = None) -> Ledger:
    ledger = Ledger("agent1")
    ledger.run(create_agent(ledger.state, "alice", "tokhash", policy or AgentPolicy(), T0), T0)
    if msat:
        ledger.run(deposit(ledger.state, "dep0", msat, "simulated", "", T0), T0)
    return ledger


def do(ledger: Ledger, decided: Decided, now_ms: int = T0) -> tuple[LedgerEvent, ...]:
    return ledger.run(decided, now_ms).events


def err(fn: Callable[[], object]) -> ArbstrError:
    with pytest.raises(ArbstrError) as info:
        fn()
    return info.value


def books(state: AccountState) -> None:
    check_invariants(state)
    assert state.available_msat >= 0


# -- account ---------------------------------------------------------------------------------------------------

def test_create_deposit_and_view() -> None:
    ledger = funded(50_000)
    v = view(ledger.state)
    assert (v.agent_id, v.name, v.balance_msat, v.deposited_msat, v.pending_msat, v.holds) == (
        "agent1", "alice", 50_000, 50_000, 0, 0)
    assert v.created_at_ms == T0
    assert [e.op_id for e in ledger.events] == ["create", "deposit:dep0"]


def test_create_twice() -> None:
    ledger = funded(0)
    assert create_agent(ledger.state, "alice", "tokhash", AgentPolicy(), T0).noop == "duplicate"
    assert err(lambda: create_agent(ledger.state, "mallory", "x", AgentPolicy(), T0)).status == 409


def test_commands_on_a_missing_agent_are_404() -> None:
    state = AccountState(agent_id="ghost")
    for call in (lambda: deposit(state, "d", 1, "simulated", "", T0),
                 lambda: reserve(state, "r", env(), T0, ttl_ms=TTL),
                 lambda: settle(state, "r", 1, T0),
                 lambda: release(state, "r", "", T0)):
        e = err(call)
        assert (e.status, e.code) == (404, "unknown_agent")


def test_deposit_is_idempotent_on_its_id() -> None:
    ledger = funded(10_000)
    first = ledger.events[-1]
    again = deposit(ledger.state, "dep0", 10_000, "simulated", "", T0 + 5)
    assert again.noop == "duplicate" and again.bodies == ()
    # Replaying the op_id through the ledger returns the original event and appends nothing.
    applied = ledger.apply("deposit:dep0", [Deposited(deposit_id="dep0", amount_msat=10_000, rail="simulated")], T0)
    assert applied.duplicate and applied.events == (first,)
    assert len(ledger.events) == 2 and ledger.state.available_msat == 10_000
    conflict = err(lambda: deposit(ledger.state, "dep0", 9_999, "simulated", "", T0))
    assert (conflict.status, conflict.code) == (409, "deposit_conflict")
    zero = err(lambda: deposit(ledger.state, "dep1", 0, "simulated", "", T0))
    assert (zero.status, zero.code) == (400, "invalid_amount")


def test_withdraw() -> None:
    ledger = funded(10_000)
    do(ledger, withdraw(ledger.state, "w1", 4_000, "simulated", "ref", T0))
    assert (ledger.state.available_msat, ledger.state.withdrawn_msat) == (6_000, 4_000)
    assert withdraw(ledger.state, "w1", 4_000, "simulated", "ref", T0).noop == "duplicate"
    assert err(lambda: withdraw(ledger.state, "w1", 5, "simulated", "", T0)).code == "withdrawal_conflict"
    e = err(lambda: withdraw(ledger.state, "w2", 6_001, "simulated", "", T0))
    assert (e.status, e.code, e.headers.get("x-should-retry")) == (402, "insufficient_balance", "false")
    books(ledger.state)


def test_withdraw_is_policy_checked_and_has_no_approval_queue() -> None:
    ledger = funded(100_000, AgentPolicy(max_tx_msat=5_000))
    assert err(lambda: withdraw(ledger.state, "w1", 5_001, "simulated", "", T0)).status == 403
    do(ledger, set_policy(ledger.state, AgentPolicy(approval_over_msat=1_000), T0))
    e = err(lambda: withdraw(ledger.state, "w1", 5_000, "simulated", "", T0))
    assert (e.status, e.code) == (403, "approval_required")
    do(ledger, withdraw(ledger.state, "w1", 1_000, "simulated", "", T0))
    assert ledger.state.withdrawn_msat == 1_000


def test_rotate_token_and_set_policy() -> None:
    ledger = funded(0)
    d = rotate_token(ledger.state, "newhash", T0)
    assert d.op_id == "token:1"
    do(ledger, d)
    assert ledger.state.token_hash == "newhash"
    assert rotate_token(ledger.state, "h3", T0).op_id == "token:2"
    do(ledger, rotate_token(ledger.state, "h3", T0, change_id="admin-7"))
    assert rotate_token(ledger.state, "h3", T0, change_id="admin-7").noop == "duplicate"
    p = AgentPolicy(max_tx_msat=5)
    do(ledger, set_policy(ledger.state, p, T0))
    assert ledger.state.policy == p and ledger.state.policy_version == 1
    assert set_policy(ledger.state, p, T0).op_id == "policy:2"


# -- reserve ---------------------------------------------------------------------------------------------------

def test_reserve_with_client_max_tokens() -> None:
    ledger = funded(100_000)
    (event,) = do(ledger, reserve(ledger.state, "r1", env(10, inp=5, fee=7), T0, ttl_ms=TTL, provider="p", model="m"))
    body = event.body
    assert isinstance(body, Reserved)
    assert (body.amount_msat, body.output_tokens, body.expires_at_ms, body.state) == (15_007, 10, T0 + TTL, "held")
    assert (ledger.state.available_msat, ledger.state.pending_msat) == (100_000 - 15_007, 15_007)
    books(ledger.state)


def test_reserve_repeat_returns_the_existing_hold() -> None:
    ledger = funded(100_000)
    do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
    again = reserve(ledger.state, "r1", env(20), T0 + 1, ttl_ms=TTL)
    assert again.noop == "duplicate" and again.bodies == ()
    assert ledger.state.holds["r1"].amount_msat == 10_000
    do(ledger, settle(ledger.state, "r1", 3_000, T0 + 2))
    # Even once resolved, a late duplicate reserve does nothing: the resolution still describes the hold.
    assert reserve(ledger.state, "r1", env(10), T0 + 3, ttl_ms=TTL).noop == "duplicate"
    assert ledger.state.resolutions["r1"].hold.amount_msat == 10_000


def test_reserve_insufficient_balance() -> None:
    ledger = funded(9_999)
    e = err(lambda: reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
    assert (e.status, e.code) == (402, "insufficient_balance")
    assert "r1" not in ledger.state.holds and "reserve:r1" not in ledger.state.op_ids
    do(ledger, deposit(ledger.state, "dep1", 1, "simulated", "", T0))
    do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))  # exactly affordable
    assert ledger.state.available_msat == 0


def test_reserve_sizes_the_output_budget_to_what_the_agent_can_afford() -> None:
    ledger = funded(25_500)
    (event,) = do(ledger, reserve(ledger.state, "r1", env(None, inp=3, fee=500), T0, ttl_ms=TTL))
    assert isinstance(event.body, Reserved)
    assert event.body.output_tokens == 22 and event.body.amount_msat == 25_500


def test_reserve_sizing_stops_at_the_ceiling() -> None:
    ledger = funded(1_000_000)
    (event,) = do(ledger, reserve(ledger.state, "r1", env(None, max_out=40), T0, ttl_ms=TTL))
    assert isinstance(event.body, Reserved) and event.body.output_tokens == 40
    (free,) = do(ledger, reserve(ledger.state, "r2", env(None, max_out=64, out_rate=0), T0, ttl_ms=TTL))
    assert isinstance(free.body, Reserved) and (free.body.output_tokens, free.body.amount_msat) == (64, 0)


def test_reserve_when_not_one_output_token_is_affordable() -> None:
    ledger = funded(3_999)
    e = err(lambda: reserve(ledger.state, "r1", env(None, inp=3), T0, ttl_ms=TTL))
    assert (e.status, e.code) == (402, "insufficient_balance")


def test_reserve_sizing_respects_the_policy_caps() -> None:
    ledger = funded(1_000_000, AgentPolicy(max_tx_msat=7_500))
    (event,) = do(ledger, reserve(ledger.state, "r1", env(None), T0, ttl_ms=TTL))
    assert isinstance(event.body, Reserved) and event.body.output_tokens == 7
    # A cap that leaves no room at all is not used for sizing: the policy then denies.
    ledger = funded(1_000_000, AgentPolicy(max_tx_msat=999))
    assert err(lambda: reserve(ledger.state, "r1", env(None), T0, ttl_ms=TTL)).status == 403


# -- settle ----------------------------------------------------------------------------------------------------

def test_settle_split() -> None:
    assert settle_split(10, 4, 0) == (4, 0)
    assert settle_split(10, 10, 0) == (10, 0)
    assert settle_split(10, 15, 100) == (15, 0)
    assert settle_split(10, 15, 3) == (13, 2)
    assert settle_split(10, 15, 0) == (10, 5)
    assert settle_split(0, 0, 0) == (0, 0)


def test_settle_under_the_hold_returns_the_rest() -> None:
    ledger = funded(100_000)
    do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
    (event,) = do(ledger, settle(ledger.state, "r1", 4_321, T0 + 1, input_tokens=3, output_tokens=4, provider="p",
                                 model="m", estimated=True), T0 + 1)
    assert isinstance(event.body, Settled) and event.body.estimated and event.body.charged_msat == 4_321
    s = ledger.state
    assert (s.available_msat, s.pending_msat, s.spent_msat, s.uncollectible_msat) == (95_679, 0, 4_321, 0)
    assert s.resolutions["r1"].kind == "settled"
    books(s)


def test_settle_over_the_hold_takes_the_overrun_from_available() -> None:
    ledger = funded(12_000)
    do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
    do(ledger, settle(ledger.state, "r1", 11_500, T0))
    s = ledger.state
    assert (s.available_msat, s.spent_msat, s.uncollectible_msat) == (500, 11_500, 0)
    books(s)


def test_settle_overrun_beyond_the_funds_is_uncollectible_never_an_overdraft() -> None:
    ledger = funded(12_000)
    do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
    (event,) = do(ledger, settle(ledger.state, "r1", 15_000, T0))
    assert isinstance(event.body, Settled)
    assert (event.body.charged_msat, event.body.uncollectible_msat) == (12_000, 3_000)
    s = ledger.state
    assert (s.available_msat, s.spent_msat, s.uncollectible_msat) == (0, 12_000, 3_000)
    assert view(s).uncollectible_msat == 3_000
    books(s)


def test_settle_is_at_most_once() -> None:
    ledger = funded(100_000)
    do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
    do(ledger, settle(ledger.state, "r1", 5_000, T0))
    assert settle(ledger.state, "r1", 9_000, T0).noop == "duplicate"
    assert ledger.state.spent_msat == 5_000


def test_settle_of_an_unknown_rid_tombstones_it() -> None:
    ledger = funded(100_000)
    (event,) = do(ledger, settle(ledger.state, "r9", 5_000, T0))
    assert isinstance(event.body, Tombstoned)
    assert ledger.state.spent_msat == 0
    e = err(lambda: reserve(ledger.state, "r9", env(10), T0, ttl_ms=TTL))
    assert (e.status, e.code) == (409, "request_released")


def test_settle_rejects_a_bad_cost() -> None:
    ledger = funded(100_000)
    do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
    assert err(lambda: settle(ledger.state, "r1", -1, T0)).status == 400


# -- release, tombstones ---------------------------------------------------------------------------------------

def test_release_returns_the_hold() -> None:
    ledger = funded(100_000)
    do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
    (event,) = do(ledger, release(ledger.state, "r1", "upstream_failed", T0))
    assert isinstance(event.body, Released) and event.body.reason == "upstream_failed"
    assert (ledger.state.available_msat, ledger.state.pending_msat, ledger.state.spent_msat) == (100_000, 0, 0)
    assert release(ledger.state, "r1", "again", T0).noop == "duplicate"
    assert settle(ledger.state, "r1", 10_000, T0).noop == "resolved"
    assert ledger.state.spent_msat == 0


def test_release_before_reserve_refuses_the_late_reserve() -> None:
    """The gateway timed out, released, and NATS delivered the buffered reserve afterwards."""
    ledger = funded(100_000)
    (event,) = do(ledger, release(ledger.state, "r1", "reserve_timeout", T0))
    assert isinstance(event.body, Tombstoned)
    e = err(lambda: reserve(ledger.state, "r1", env(10), T0 + 1, ttl_ms=TTL))
    assert (e.status, e.code) == (409, "request_released")
    assert release(ledger.state, "r1", "", T0).noop == "duplicate"
    assert settle(ledger.state, "r1", 10, T0).noop == "tombstoned"
    assert expire(ledger.state, "r1", T0 + DAY_MS).noop == "tombstoned"
    assert ledger.state.available_msat == 100_000


# -- expiry ----------------------------------------------------------------------------------------------------

def test_expire_waits_for_the_ttl() -> None:
    ledger = funded(100_000)
    do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
    e = err(lambda: expire(ledger.state, "r1", T0 + TTL - 1))
    assert (e.status, e.code) == (409, "not_expired")


def test_expire_charges_the_whole_hold_by_default() -> None:
    ledger = funded(100_000)
    do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
    (event,) = do(ledger, expire(ledger.state, "r1", T0 + TTL), T0 + TTL)
    assert event.body.kind == "expired" and event.body.action == "charge" and event.body.charged_msat == 10_000
    assert (ledger.state.available_msat, ledger.state.spent_msat) == (90_000, 10_000)
    assert ledger.state.resolutions["r1"].reason == "charge"  # the audit flag
    assert settle(ledger.state, "r1", 1, T0 + TTL).noop == "resolved"


def test_expire_can_release_instead() -> None:
    ledger = funded(100_000)
    do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
    do(ledger, expire(ledger.state, "r1", T0 + TTL, action="release"), T0 + TTL)
    assert (ledger.state.available_msat, ledger.state.spent_msat) == (100_000, 0)


def test_expire_of_an_unknown_rid_tombstones_it() -> None:
    ledger = funded(100_000)
    (event,) = do(ledger, expire(ledger.state, "r1", T0))
    assert isinstance(event.body, Tombstoned)
    assert err(lambda: reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL)).code == "request_released"


# -- approvals -------------------------------------------------------------------------------------------------

APPROVING = AgentPolicy(approval_over_msat=5_000, approval_timeout_s=120)


def test_approval_then_settle() -> None:
    ledger = funded(100_000, APPROVING)
    (event,) = do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
    assert isinstance(event.body, Reserved) and event.body.state == "awaiting_approval"
    assert event.body.approval_deadline_ms == T0 + 120_000
    assert event.body.expires_at_ms == T0 + 120_000 + TTL
    assert ledger.state.pending_msat == 10_000  # the funds are held while a human decides
    do(ledger, approve(ledger.state, "r1", T0 + 1_000), T0 + 1_000)
    assert ledger.state.holds["r1"].state == "held"
    assert approve(ledger.state, "r1", T0 + 2_000).noop == "duplicate"
    e = err(lambda: deny(ledger.state, "r1", "", T0 + 2_000))
    assert (e.status, e.code) == (409, "already_decided")  # approved: a denial now would do nothing
    do(ledger, settle(ledger.state, "r1", 8_000, T0 + 3_000), T0 + 3_000)
    assert ledger.state.spent_msat == 8_000
    for decide_again in (lambda: approve(ledger.state, "r1", T0 + 4_000),
                         lambda: deny(ledger.state, "r1", "", T0 + 4_000)):
        e = err(decide_again)
        assert (e.status, e.code) == (409, "already_decided")  # never a quiet 200 "settled"


def test_deny_releases_the_hold() -> None:
    ledger = funded(100_000, APPROVING)
    do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
    do(ledger, deny(ledger.state, "r1", "too pricey", T0 + 1))
    assert ledger.state.resolutions["r1"].kind == "denied"
    assert (ledger.state.available_msat, ledger.state.pending_msat) == (100_000, 0)
    e = err(lambda: approve(ledger.state, "r1", T0 + 2))
    assert (e.status, e.code) == (409, "already_decided")


def test_approval_past_the_deadline_is_a_denial() -> None:
    ledger = funded(100_000, APPROVING)
    do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
    (event,) = do(ledger, approve(ledger.state, "r1", T0 + 120_000), T0 + 120_000)
    assert event.body.kind == "denied" and event.body.reason == "approval_timeout"
    assert ledger.state.available_msat == 100_000


def test_approval_timeout_by_the_sweeper() -> None:
    ledger = funded(100_000, APPROVING)
    do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
    assert err(lambda: expire(ledger.state, "r1", T0 + 119_999)).code == "not_expired"
    (event,) = do(ledger, expire(ledger.state, "r1", T0 + 120_000), T0 + 120_000)
    assert event.body.kind == "denied" and event.body.reason == "approval_timeout"
    assert err(lambda: approve(ledger.state, "r1", T0 + 120_001)).code == "already_decided"
    assert ledger.state.available_msat == 100_000 and ledger.state.spent_msat == 0


def test_approve_or_deny_what_needs_none() -> None:
    ledger = funded(100_000)
    do(ledger, reserve(ledger.state, "r1", env(1), T0, ttl_ms=TTL))
    assert err(lambda: approve(ledger.state, "r1", T0)).code == "not_awaiting_approval"
    assert err(lambda: deny(ledger.state, "r1", "", T0)).code == "not_awaiting_approval"
    e = err(lambda: approve(ledger.state, "nope", T0))
    assert (e.status, e.code) == (404, "unknown_request")


# -- at most one resolution, whatever the order ------------------------------------------------------------------

def test_held_hold_resolves_once_in_any_order() -> None:
    late = T0 + TTL
    commands: dict[str, Callable[[AccountState], Decided]] = {
        "settle": lambda s: settle(s, "r1", 7_000, late),
        "release": lambda s: release(s, "r1", "failed", late),
        "expire": lambda s: expire(s, "r1", late),
    }
    outcomes = {"settle": 7_000, "release": 0, "expire": 10_000}
    for order in itertools.permutations(commands):
        ledger = funded(100_000)
        do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
        for name in order:
            do(ledger, commands[name](ledger.state), late)
        resolved = [e for e in ledger.events if e.body.kind in ("settled", "released", "expired")]
        assert len(resolved) == 1, order
        assert ledger.state.spent_msat == outcomes[order[0]], order
        books(ledger.state)


def test_awaiting_hold_resolves_once_in_any_order() -> None:
    late = T0 + 120_000  # past the approval deadline
    commands: dict[str, Callable[[AccountState], Decided]] = {
        "settle": lambda s: settle(s, "r1", 7_000, late),
        "release": lambda s: release(s, "r1", "failed", late),
        "expire": lambda s: expire(s, "r1", late),
        "deny": lambda s: deny(s, "r1", "no", late),
        "approve": lambda s: approve(s, "r1", late),
    }
    for order in itertools.permutations(commands):
        ledger = funded(100_000, APPROVING)
        do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
        for i, name in enumerate(order):
            if i and name in ("approve", "deny"):  # deciding one already resolved is a 409, and changes nothing
                assert err(lambda: commands[name](ledger.state)).code in ("already_decided", "not_awaiting_approval")
                continue
            do(ledger, commands[name](ledger.state), late)
        kinds = [e.body.kind for e in ledger.events[3:]]
        assert len(kinds) == 1 and kinds[0] in ("settled", "released", "denied"), (order, kinds)
        assert ledger.state.spent_msat == (7_000 if order[0] == "settle" else 0)
        books(ledger.state)


# -- evolve refuses what would break the chain or the books ------------------------------------------------------

def _forge(ledger: Ledger, op_id: str, body: object, *, seq: Optional[int] = None,
           prev_hash: Optional[str] = None, at_ms: int = T0, agent_id: str = "agent1", part: int = 0) -> LedgerEvent:
    s = ledger.state
    return LedgerEvent(op_id=op_id, agent_id=agent_id, seq=s.seq + 1 if seq is None else seq, part=part, at_ms=at_ms,
                       prev_hash=s.last_hash if prev_hash is None else prev_hash, body=body)


def _refused(ledger: Ledger, event: LedgerEvent, why: str) -> None:
    before = ledger.state.copy()
    with pytest.raises(LedgerViolation, match=why):
        apply_event(ledger.state, event)
    assert ledger.state == before  # a refused event changes nothing


def test_evolve_refuses_broken_chains_and_replays() -> None:
    ledger = funded(10_000)
    dep = Deposited(deposit_id="d2", amount_msat=1, rail="simulated")
    _refused(ledger, _forge(ledger, "deposit:d2", dep, seq=4), "expected seq 3")
    _refused(ledger, _forge(ledger, "deposit:d2", dep, seq=2), "expected seq 3")
    _refused(ledger, _forge(ledger, "deposit:d2", dep, prev_hash="0" * 64), "prev_hash")
    _refused(ledger, _forge(ledger, "deposit:d2", dep, agent_id="agent2"), "another agent")
    # A replay of the very last command is still a replay: it starts again at part 0.
    _refused(ledger, _forge(ledger, "deposit:dep0", dep), "op_id already applied")
    _refused(ledger, _forge(ledger, "deposit:dep0", dep, part=2), "op_id already applied")
    _refused(ledger, _forge(ledger, "create", dep, part=1), "op_id already applied")
    _refused(ledger, _forge(ledger, "deposit:d2", dep, part=1), "first event is missing")
    apply_event(ledger.state, _forge(ledger, "deposit:dep0", dep, part=1))  # the same command's next event
    assert ledger.state.op_ids["deposit:dep0"] == (2, 3)
    _refused(ledger, _forge(ledger, "deposit:x", Deposited(deposit_id="dep0", amount_msat=1, rail="s")),
             "already credited")


def test_evolve_refuses_events_before_creation() -> None:
    ledger = Ledger("agent1")
    _refused(ledger, _forge(ledger, "deposit:d", Deposited(deposit_id="d", amount_msat=1, rail="s")),
             "does not exist")


def test_evolve_refuses_overdrafts() -> None:
    ledger = funded(10_000)
    _refused(ledger, _forge(ledger, "reserve:r1", Reserved(rid="r1", amount_msat=10_001, output_tokens=1,
                                                           expires_at_ms=T0)), "exceeds available")
    _refused(ledger, _forge(ledger, "withdraw:w", Withdrawn(withdrawal_id="w", amount_msat=10_001, rail="s")),
             "exceeds available")
    do(ledger, reserve(ledger.state, "r1", env(5), T0, ttl_ms=TTL))
    _refused(ledger, _forge(ledger, "settle:r1", Settled(rid="r1", cost_msat=10_001, charged_msat=10_001,
                                                         uncollectible_msat=0)), "exceeds hold")
    _refused(ledger, _forge(ledger, "settle:r1", Settled(rid="r1", cost_msat=9_000, charged_msat=5_000,
                                                         uncollectible_msat=4_000)), "uncollectible")


def test_evolve_refuses_a_second_resolution_and_a_second_reserve() -> None:
    ledger = funded(10_000)
    do(ledger, reserve(ledger.state, "r1", env(5), T0, ttl_ms=TTL))
    _refused(ledger, _forge(ledger, "x", Reserved(rid="r1", amount_msat=1, output_tokens=1, expires_at_ms=T0)),
             "open hold")
    do(ledger, settle(ledger.state, "r1", 1_000, T0))
    _refused(ledger, _forge(ledger, "release:r1", Released(rid="r1")), "already resolved")
    _refused(ledger, _forge(ledger, "t", Tombstoned(rid="r1")), "only unknown ones")
    _refused(ledger, _forge(ledger, "y", Reserved(rid="r1", attempt="b", amount_msat=1, output_tokens=1,
                                                  expires_at_ms=T0)), "cannot be reserved again")
    do(ledger, release(ledger.state, "r2", "", T0))
    _refused(ledger, _forge(ledger, "reserve:r2", Reserved(rid="r2", amount_msat=1, output_tokens=1,
                                                           expires_at_ms=T0)), "tombstoned")


def test_evolve_refuses_a_late_approval() -> None:
    from schemas.ledger import Approved
    ledger = funded(100_000, APPROVING)
    do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
    _refused(ledger, _forge(ledger, "approve:r1", Approved(rid="r1"), at_ms=T0 + 120_000), "after the deadline")
    apply_event(ledger.state, _forge(ledger, "approve:r1", Approved(rid="r1"), at_ms=T0 + 119_999))
    _refused(ledger, _forge(ledger, "x", Approved(rid="r1")), "not awaiting approval")


def test_evolve_refuses_an_early_or_wrong_expiry() -> None:
    from schemas.ledger import Expired
    ledger = funded(10_000)
    do(ledger, reserve(ledger.state, "r1", env(5), T0, ttl_ms=TTL))
    _refused(ledger, _forge(ledger, "expire:r1", Expired(rid="r1", action="charge", charged_msat=5_000),
                            at_ms=T0 + TTL - 1), "expires at")
    _refused(ledger, _forge(ledger, "expire:r1", Expired(rid="r1", action="charge", charged_msat=1),
                            at_ms=T0 + TTL), "must charge 5000")


def test_evolve_is_pure_and_fold_replays() -> None:
    ledger = funded(10_000)
    before = ledger.state.copy()
    (event,) = next_events(ledger.state, "deposit:d9", [Deposited(deposit_id="d9", amount_msat=5, rail="s")], T0)
    after = evolve(ledger.state, event)
    assert ledger.state == before and after.available_msat == 10_005
    assert fold(ledger.events) == ledger.state
    assert fold([], "nobody") == AccountState(agent_id="nobody")
    with pytest.raises(ValueError):
        fold([])


def test_ledger_apply_is_all_or_nothing() -> None:
    ledger = funded(10_000)
    before, n = ledger.state.copy(), len(ledger.events)
    bodies = [Deposited(deposit_id="d5", amount_msat=5, rail="s"),
              Withdrawn(withdrawal_id="w5", amount_msat=10_006, rail="s")]
    with pytest.raises(LedgerViolation):
        ledger.apply("combo", bodies, T0)
    assert ledger.state == before and len(ledger.events) == n
    ok = [Deposited(deposit_id="d5", amount_msat=5, rail="s"), Withdrawn(withdrawal_id="w5", amount_msat=10, rail="s")]
    applied = ledger.apply("combo", ok, T0)
    assert [(e.seq, e.part) for e in applied.events] == [(3, 0), (4, 1)]
    assert {e.op_id for e in applied.events} == {"combo"}
    assert ledger.apply("combo", ok, T0).events == applied.events
    assert fold(ledger.events) == ledger.state


def test_the_daily_window_drops_old_charges() -> None:
    ledger = funded(1_000_000)
    for i in range(3):
        do(ledger, withdraw(ledger.state, f"w{i}", 10, "simulated", "", T0 + i * 3_600_000), T0 + i * 3_600_000)
    assert len(ledger.state.window) == 3
    later = T0 + DAY_MS + 3_600_000 + 60_000  # a bucket counts until 24 h after its minute ends
    do(ledger, withdraw(ledger.state, "w9", 10, "simulated", "", later), later)
    # The first two buckets have aged out; the third still counts, and the new one is added.
    assert [m for _, m in ledger.state.window] == [10, 10]


# -- the journal schema and the hash chain ----------------------------------------------------------------------

def test_amounts_are_strict_non_negative_ints() -> None:
    for bad in (-1, 1.0, "5", True):
        with pytest.raises(ValidationError):
            Deposited(deposit_id="d", amount_msat=bad, rail="s")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Settled(rid="r", cost_msat=10, charged_msat=5, uncollectible_msat=4)
    with pytest.raises(ValidationError):
        Reserved(rid="r", amount_msat=1, output_tokens=1, expires_at_ms=1, state="awaiting_approval")
    with pytest.raises(ValidationError):
        Released(rid="r", surprise=1)  # type: ignore[call-arg]


def test_events_round_trip_through_json_with_the_same_hash() -> None:
    ledger = funded(100_000, APPROVING)
    do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
    do(ledger, approve(ledger.state, "r1", T0 + 1), T0 + 1)
    do(ledger, settle(ledger.state, "r1", 20_000, T0 + 2), T0 + 2)
    for event in ledger.events:
        back = LedgerEvent.model_validate_json(event.model_dump_json())
        assert back == event and event_hash(back) == event_hash(event)
    assert len({event_hash(e) for e in ledger.events}) == len(ledger.events)


def test_verify_chain_finds_tampering() -> None:
    ledger = funded(100_000)
    for i in range(3):
        do(ledger, reserve(ledger.state, f"r{i}", env(10), T0, ttl_ms=TTL))
    events = list(ledger.events)
    assert verify_chain(events) == (True, None)
    assert verify_chain([]) == (True, None)
    tampered = events[1].model_copy(update={"body": Deposited(deposit_id="dep0", amount_msat=999_999, rail="simulated")})
    assert verify_chain(events[:1] + [tampered] + events[2:]) == (False, 3)
    assert verify_chain(events[:2] + events[3:]) == (False, 3)
    assert verify_chain([events[0], events[2], events[1]]) == (False, 2)
    assert verify_chain(events[2:], prev_hash=event_hash(events[1]), start_seq=3) == (True, None)
    assert verify_chain(events[2:]) == (False, 1)


def test_journal_entry_carries_consecutive_events_of_one_agent() -> None:
    ledger = funded(100_000)
    do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
    entry = JournalEntry(op_id="reserve:r1", agent_id="agent1", events=ledger.events[1:])
    assert JournalEntry.model_validate_json(entry.model_dump_json()) == entry
    with pytest.raises(ValidationError):
        JournalEntry(op_id="x", agent_id="agent1", events=[ledger.events[0], ledger.events[2]])
    with pytest.raises(ValidationError):
        JournalEntry(op_id="x", agent_id="agent2", events=ledger.events[:1])
    with pytest.raises(ValidationError):
        JournalEntry(op_id="x", agent_id="agent1", events=[])
