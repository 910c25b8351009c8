"""Spending policy: every branch of ``check``, the rolling window with retry-after, and the deciders using it."""

from __future__ import annotations

from typing import Optional, Sequence

import pytest

from actors.vault.decide import (
    Ledger,
    approve,
    create_agent,
    deposit,
    expire,
    release,
    reserve,
    settle,
    withdraw,
)
from actors.vault.fold import DAY_MS, WINDOW_BUCKET_MS, AccountState, Hold
from actors.vault.policy import Decision, check, daily_headroom_msat, daily_used_msat, window_charges_msat
from schemas.errors import ArbstrError
from schemas.router import Envelope
from schemas.vault import AgentPolicy

# Minute-aligned so bucket arithmetic in the expectations stays readable.
T0 = 1_700_000_040_000
assert T0 % WINDOW_BUCKET_MS == 0
HOUR = 3_600_000
TTL = 60_000


def state_with(charges: Sequence[tuple[int, int]] = (), pending: int = 0) -> AccountState:
    """A state whose window holds ``charges`` as (bucket end, msat) and one hold of ``pending``."""
    s = AccountState(agent_id="a", created=True, available_msat=10**12, deposited_msat=10**12)
    s.window = list(charges)
    if pending:
        s.holds["h"] = Hold(rid="h", amount_msat=pending, output_tokens=1, expires_at_ms=0, provider="", model="",
                            state="held", approval_deadline_ms=None, reserved_at_ms=0)
        s.pending_msat = pending
        s.available_msat -= pending
    return s


def test_no_limits_allows() -> None:
    d = check(AgentPolicy(), state_with(), 10**9, T0)
    assert d == Decision("allow") and d.allowed and d.status == 200 and not d.denied


def test_max_tx() -> None:
    p = AgentPolicy(max_tx_msat=1_000)
    assert check(p, state_with(), 1_000, T0).allowed
    d = check(p, state_with(), 1_001, T0)
    assert (d.outcome, d.status, d.code) == ("deny_max_tx", 403, "max_tx_exceeded")
    e = d.error()
    assert (e.status, e.code, e.headers) == (403, "max_tx_exceeded", {})


def test_daily_limit_counts_window_charges_and_pending_holds() -> None:
    p = AgentPolicy(daily_limit_msat=10_000)
    s = state_with([(T0 - HOUR, 4_000)], pending=3_000)
    assert window_charges_msat(s, T0) == 4_000
    assert daily_used_msat(s, T0) == 7_000
    assert daily_headroom_msat(p, s, T0) == 3_000
    assert daily_headroom_msat(AgentPolicy(), s, T0) is None
    assert check(p, s, 3_000, T0).allowed
    d = check(p, s, 3_001, T0)
    assert (d.outcome, d.status, d.code) == ("deny_daily", 429, "daily_limit_exceeded")


def test_daily_retry_after_is_when_enough_charges_age_out() -> None:
    p = AgentPolicy(daily_limit_msat=10_000)
    # Two charge buckets: 3,000 ending 20 h ago, 5,000 ending 2 h ago.
    s = state_with([(T0 - 2 * HOUR, 5_000), (T0 - 20 * HOUR, 3_000)])
    # Needs 1,000 freed: the older bucket ages out in 4 h.
    d = check(p, s, 3_000, T0)
    assert (d.outcome, d.retry_after_s) == ("deny_daily", 4 * 3600)
    assert d.error().headers == {"retry-after": str(4 * 3600)}
    # Needs 4,000 freed: both must go, the newer one in 22 h.
    assert check(p, s, 6_000, T0).retry_after_s == 22 * 3600
    # A bucket counts until exactly 24 h after it ends.
    assert not check(p, s, 3_000, T0 + 4 * HOUR - 1).allowed
    assert check(p, s, 3_000, T0 + 4 * HOUR).allowed


def test_daily_retry_after_rounds_up_to_a_whole_second() -> None:
    s = state_with([(T0 - DAY_MS + 1, 5_000)])
    assert check(AgentPolicy(daily_limit_msat=5_000), s, 1, T0).retry_after_s == 1


def test_daily_no_retry_after_when_waiting_cannot_help() -> None:
    p = AgentPolicy(daily_limit_msat=10_000)
    d = check(p, state_with(), 10_001, T0)
    assert d.outcome == "deny_daily" and d.retry_after_s is None
    assert d.error().headers == {}
    # Pending holds do not age out: with 8,000 pending, 3,000 more never fits by waiting alone.
    d = check(p, state_with([(T0, 1_000)], pending=8_000), 3_000, T0)
    assert d.outcome == "deny_daily" and d.retry_after_s is None


def test_approval_threshold() -> None:
    p = AgentPolicy(approval_over_msat=5_000)
    assert check(p, state_with(), 5_000, T0).allowed
    d = check(p, state_with(), 5_001, T0)
    assert (d.outcome, d.status, d.code, d.denied) == ("needs_approval", 202, "approval_required", False)
    assert d.error().status == 403


def test_approval_turns_limit_denials_into_approvals() -> None:
    p = AgentPolicy(max_tx_msat=1_000, daily_limit_msat=2_000, approval_over_msat=10_000)
    assert check(p, state_with(), 1_500, T0).outcome == "needs_approval"
    assert check(p, state_with([(T0, 1_500)]), 600, T0).outcome == "needs_approval"
    assert check(p, state_with([(T0, 1_500)]), 500, T0).allowed


@pytest.mark.parametrize("amount", [-1, 1.5, True, "10", None])
def test_fail_closed_on_bad_amounts(amount: object) -> None:
    d = check(AgentPolicy(), state_with(), amount, T0)  # type: ignore[arg-type]
    assert (d.outcome, d.status, d.code) == ("deny_error", 403, "policy_error")


def test_fail_closed_on_a_bad_policy_or_state() -> None:
    assert check({"max_tx_msat": 5}, state_with(), 1, T0).outcome == "deny_error"  # type: ignore[arg-type]
    broken = state_with()
    broken.window = [(T0, None)]  # type: ignore[list-item]
    assert check(AgentPolicy(daily_limit_msat=10), broken, 1, T0).outcome == "deny_error"
    assert check(AgentPolicy(), state_with(), 1, -5).outcome == "deny_error"


# -- through the deciders ----------------------------------------------------------------------------------------

def env(out: Optional[int] = 10) -> Envelope:
    # 1000 msat per output token, no input cost.
    return Envelope(input_tokens=0, output_tokens=out, input_rate=0, output_rate=1_000_000, max_output_tokens=100)


def funded(policy: AgentPolicy, msat: int = 1_000_000) -> Ledger:
    ledger = Ledger("agent1")
    ledger.run(create_agent(ledger.state, "a", "h", policy, T0), T0)
    ledger.run(deposit(ledger.state, "d", msat, "simulated", "", T0), T0)
    return ledger


def refused(fn: object) -> ArbstrError:
    with pytest.raises(ArbstrError) as info:
        fn()  # type: ignore[operator]
    return info.value


def test_reserve_over_the_daily_limit_says_when_to_retry() -> None:
    ledger = funded(AgentPolicy(daily_limit_msat=25_000))
    ledger.run(reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL), T0)
    ledger.run(settle(ledger.state, "r1", 10_000, T0 + 1_000), T0 + 1_000)
    ledger.run(reserve(ledger.state, "r2", env(10), T0 + HOUR, ttl_ms=TTL), T0 + HOUR)  # pending: counts
    e = refused(lambda: reserve(ledger.state, "r3", env(10), T0 + 2 * HOUR, ttl_ms=TTL))
    # r1's charge sits in the bucket ending T0 + 1 min; it frees room 24 h after that.
    expected = (T0 + WINDOW_BUCKET_MS + DAY_MS - (T0 + 2 * HOUR)) // 1000
    assert (e.status, e.code, e.headers["retry-after"]) == (429, "daily_limit_exceeded", str(expected))
    later = T0 + 2 * HOUR + expected * 1000
    ledger.run(reserve(ledger.state, "r3", env(10), later, ttl_ms=TTL), later)
    assert "r3" in ledger.state.holds
    # A released hold stops counting at once.
    ledger.run(release(ledger.state, "r2", "", later), later)
    assert daily_used_msat(ledger.state, later) == 10_000


def test_withdrawals_count_toward_the_daily_limit() -> None:
    ledger = funded(AgentPolicy(daily_limit_msat=15_000))
    ledger.run(withdraw(ledger.state, "w1", 10_000, "simulated", "", T0), T0)
    assert refused(lambda: reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL)).status == 429
    # With no max_tokens, the vault sizes the request to the remaining headroom instead of refusing it.
    ledger.run(reserve(ledger.state, "r1", env(None), T0, ttl_ms=TTL), T0)
    assert ledger.state.holds["r1"].amount_msat == 5_000


def test_reserve_over_max_tx_is_403() -> None:
    ledger = funded(AgentPolicy(max_tx_msat=9_999))
    e = refused(lambda: reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))
    assert (e.status, e.code) == (403, "max_tx_exceeded")
    assert ledger.state.holds == {} and "reserve:r1" not in ledger.state.op_ids


def test_reserve_that_needs_approval_waits_then_times_out() -> None:
    ledger = funded(AgentPolicy(max_tx_msat=5_000, approval_over_msat=50_000, approval_timeout_s=60))
    ledger.run(reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL), T0)  # over max_tx: approval, not 403
    hold = ledger.state.holds["r1"]
    assert (hold.state, hold.approval_deadline_ms) == ("awaiting_approval", T0 + 60_000)
    assert ledger.state.available_msat == 990_000
    assert refused(lambda: expire(ledger.state, "r1", T0 + 59_999)).code == "not_expired"
    deadline = T0 + 60_000
    ledger.run(approve(ledger.state, "r1", deadline), deadline)  # too late: the timeout wins
    res = ledger.state.resolutions["r1"]
    assert (res.kind, res.reason) == ("denied", "approval_timeout")
    assert ledger.state.available_msat == 1_000_000 and ledger.state.pending_msat == 0
