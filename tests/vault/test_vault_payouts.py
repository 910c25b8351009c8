"""Payouts and deposit invoices in the vault's pure core: every decider branch and the books after each."""

from __future__ import annotations

import pytest

from actors.vault.decide import (
    Ledger,
    approve_payout,
    fail_payout,
    issue_invoice,
    reserve,
    settle_payout,
    start_payout,
)
from actors.vault.fold import LedgerViolation, fold, next_events, view
from actors.vault.policy import daily_used_msat
from schemas.ledger import PayoutSettled, PayoutStarted
from schemas.vault import AgentPolicy
from tests.vault.test_vault_fold import T0, TTL, books, deposit, do, env, err, funded


def start(ledger: Ledger, pid: str = "p1", amount: int = 10_000, fee_limit: int = 100, now: int = T0) -> None:
    do(ledger, start_payout(ledger.state, pid, amount, fee_limit, "lightning", f"hash-{pid}", "lnbc1...", now), now)


def test_start_holds_amount_and_fee_limit() -> None:
    ledger = funded(50_000)
    start(ledger)
    s = ledger.state
    assert (s.available_msat, s.payout_pending_msat, s.withdrawn_msat) == (39_900, 10_100, 0)
    assert s.payouts["p1"].destination == "lnbc1..." and s.payouts["p1"].reference == "hash-p1"
    v = view(s)
    assert (v.balance_msat, v.pending_msat, v.payouts_pending_msat) == (39_900, 10_100, 10_100)
    books(s)


def test_start_again_is_a_noop_and_other_terms_conflict() -> None:
    ledger = funded(50_000)
    start(ledger)
    again = start_payout(ledger.state, "p1", 10_000, 100, "lightning", "hash-p1", "lnbc1...", T0)
    assert again.noop == "duplicate" and again.bodies == ()
    e = err(lambda: start_payout(ledger.state, "p1", 9_000, 100, "lightning", "hash-p1", "", T0))
    assert (e.status, e.code) == (409, "payout_conflict")
    do(ledger, fail_payout(ledger.state, "p1", "no_route", T0))
    # Still a duplicate once resolved: a retried request never pays twice.
    assert start_payout(ledger.state, "p1", 10_000, 100, "lightning", "hash-p1", "", T0).noop == "duplicate"


def test_start_refuses_bad_amounts_and_overdraft() -> None:
    ledger = funded(10_000)
    assert err(lambda: start_payout(ledger.state, "p", 0, 0, "lightning", "h", "", T0)).code == "invalid_amount"
    assert err(lambda: start_payout(ledger.state, "p", 5, -1, "lightning", "h", "", T0)).code == "invalid_amount"
    e = err(lambda: start_payout(ledger.state, "p", 10_000, 1, "lightning", "h", "", T0))
    assert (e.status, e.code) == (402, "insufficient_balance")
    do(ledger, start_payout(ledger.state, "p", 9_999, 1, "lightning", "h", "", T0))
    assert ledger.state.available_msat == 0


def test_start_is_policy_checked_with_the_fee_limit() -> None:
    ledger = funded(100_000, AgentPolicy(max_tx_msat=10_000, daily_limit_msat=25_000))
    e = err(lambda: start_payout(ledger.state, "p", 10_000, 1, "lightning", "h", "", T0))
    assert (e.status, e.code) == (403, "max_tx_exceeded")
    start(ledger, "a", 9_000, 1_000)
    start(ledger, "b", 9_000, 1_000)
    # Payouts under way count against the daily limit like pending holds.
    assert daily_used_msat(ledger.state, T0) == 20_000
    e = err(lambda: start_payout(ledger.state, "c", 5_000, 1, "lightning", "h", "", T0))
    assert (e.status, e.code) == (429, "daily_limit_exceeded")
    # A failed payout frees its share of the limit; a settled one stays in the window.
    do(ledger, fail_payout(ledger.state, "a", "no_route", T0))
    do(ledger, settle_payout(ledger.state, "b", 10, "pre", T0))
    assert daily_used_msat(ledger.state, T0) == 9_010
    assert daily_used_msat(ledger.state, T0 + 86_400_000 + 60_000) == 0


def test_a_payout_over_the_approval_threshold_is_held_until_approved() -> None:
    ledger = funded(100_000, AgentPolicy(approval_over_msat=1_000, approval_timeout_s=60))
    do(ledger, start_payout(ledger.state, "p", 5_000, 0, "lightning", "h", "", T0))
    p = ledger.state.payouts["p"]
    assert (p.approval_deadline_ms, ledger.state.payout_pending_msat) == (T0 + 60_000, 5_000)
    books(ledger.state)
    e = err(lambda: approve_payout(ledger.state, "p", T0 + 60_000))
    assert e.code == "approval_timed_out"
    do(ledger, approve_payout(ledger.state, "p", T0 + 1))
    assert ledger.state.payouts["p"].approval_deadline_ms is None
    assert approve_payout(ledger.state, "p", T0 + 2).noop == "duplicate"
    # Under the threshold: no approval step.
    do(ledger, start_payout(ledger.state, "q", 1_000, 0, "lightning", "h2", "", T0))
    assert ledger.state.payouts["q"].approval_deadline_ms is None
    e = err(lambda: approve_payout(ledger.state, "q", T0))
    assert e.code == "not_awaiting_approval"


def test_settle_charges_amount_plus_actual_fee() -> None:
    ledger = funded(50_000)
    start(ledger)
    do(ledger, settle_payout(ledger.state, "p1", 37, "preimage", T0 + 1), T0 + 1)
    s = ledger.state
    assert (s.available_msat, s.payout_pending_msat, s.withdrawn_msat) == (50_000 - 10_037, 0, 10_037)
    end = s.payouts_done["p1"]
    assert (end.kind, end.charged_msat, end.fee_msat) == ("settled", 10_037, 37)
    books(s)
    assert settle_payout(s, "p1", 37, "preimage", T0).noop == "duplicate"
    e = err(lambda: fail_payout(s, "p1", "late", T0))
    assert (e.status, e.code) == (409, "payout_resolved")


def test_settle_refuses_unknown_bad_fees_and_failed_payouts() -> None:
    ledger = funded(50_000)
    assert err(lambda: settle_payout(ledger.state, "nope", 0, "", T0)).code == "unknown_payout"
    start(ledger)
    assert err(lambda: settle_payout(ledger.state, "p1", -1, "", T0)).code == "invalid_amount"
    do(ledger, fail_payout(ledger.state, "p1", "no_route", T0))
    e = err(lambda: settle_payout(ledger.state, "p1", 0, "", T0))
    assert (e.status, e.code) == (409, "payout_resolved")


def test_a_fee_over_the_limit_is_recorded_not_refused_and_the_agent_pays_at_most_the_limit() -> None:
    ledger = funded(50_000)
    start(ledger)  # 10,000 + a fee limit of 100
    decided = settle_payout(ledger.state, "p1", 130, "", T0)
    [body] = decided.bodies
    assert isinstance(body, PayoutSettled)
    assert (body.charged_msat, body.fee_msat, body.fee_overrun_msat) == (10_100, 100, 30)
    do(ledger, decided)
    assert (ledger.state.available_msat, ledger.state.withdrawn_msat) == (39_900, 10_100)
    books(ledger.state)


def test_fail_releases_everything() -> None:
    ledger = funded(50_000)
    start(ledger)
    do(ledger, fail_payout(ledger.state, "p1", "", T0))
    s = ledger.state
    assert (s.available_msat, s.payout_pending_msat, s.withdrawn_msat) == (50_000, 0, 0)
    assert s.payouts_done["p1"].reason == "failed"
    assert fail_payout(s, "p1", "x", T0).noop == "duplicate"
    assert err(lambda: fail_payout(s, "other", "", T0)).code == "unknown_payout"
    books(s)


def test_payouts_and_holds_share_the_balance() -> None:
    ledger = funded(20_000)
    do(ledger, reserve(ledger.state, "r1", env(10), T0, ttl_ms=TTL))  # 10,000 held
    e = err(lambda: start_payout(ledger.state, "p", 10_000, 1, "lightning", "h", "", T0))
    assert e.code == "insufficient_balance"
    start(ledger, "p", 9_000, 1_000)
    assert ledger.state.available_msat == 0
    assert err(lambda: reserve(ledger.state, "r2", env(1), T0, ttl_ms=TTL)).code == "insufficient_balance"
    books(ledger.state)


def test_fold_refuses_forged_payout_events() -> None:
    ledger = funded(10_000)
    too_big = next_events(ledger.state, "payout:x", [PayoutStarted(payout_id="x", amount_msat=10_000,
                                                                   fee_limit_msat=1, rail="lightning")], T0)
    with pytest.raises(LedgerViolation):
        fold([*ledger.events, *too_big])
    start(ledger, "p", 5_000, 10)
    wrong_charge = next_events(ledger.state, "payout_settled:p",
                               [PayoutSettled(payout_id="p", charged_msat=5_000, fee_msat=5)], T0)
    with pytest.raises(LedgerViolation):
        fold([*ledger.events, *wrong_charge])
    over_limit = next_events(ledger.state, "payout_settled:p",
                             [PayoutSettled(payout_id="p", charged_msat=5_011, fee_msat=11)], T0)
    with pytest.raises(LedgerViolation):
        fold([*ledger.events, *over_limit])
    # Replaying the honest journal gives the live state.
    do(ledger, settle_payout(ledger.state, "p", 10, "", T0))
    replayed = fold(ledger.events)
    assert (replayed.available_msat, replayed.withdrawn_msat, replayed.payouts_done.keys()) == (
        ledger.state.available_msat, ledger.state.withdrawn_msat, ledger.state.payouts_done.keys())


def test_invoice_issued_then_credited_with_its_settle_index() -> None:
    ledger = funded(0)
    do(ledger, issue_invoice(ledger.state, "ln:h1", 21_000, "lightning", "h1", "lnbc...", T0 + 3_600_000, T0))
    assert ledger.state.invoices["ln:h1"].reference == "h1" and ledger.state.available_msat == 0
    assert issue_invoice(ledger.state, "ln:h1", 21_000, "lightning", "h1", "", 0, T0).noop == "duplicate"
    assert err(lambda: issue_invoice(ledger.state, "ln:h2", 0, "lightning", "h2", "", 0, T0)).code == \
        "invalid_amount"
    do(ledger, deposit(ledger.state, "ln:h1", 21_000, "lightning", "settle_index=7", T0))
    assert (ledger.state.available_msat, ledger.state.settle_index) == (21_000, 7)
    do(ledger, deposit(ledger.state, "d9", 5, "simulated", "", T0))
    e = err(lambda: issue_invoice(ledger.state, "d9", 1, "lightning", "h", "", 0, T0))
    assert (e.status, e.code) == (409, "deposit_conflict")
