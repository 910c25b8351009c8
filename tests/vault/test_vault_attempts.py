"""Request ids and reserve attempts in the pure core (issue 12, "a failed request burns its X-Request-Id").

A rid whose hold was released (nothing charged) takes a new reserve attempt; a charged or in-flight rid stays a
409. The late-reserve guard of DESIGN §6 holds per attempt: a release that came before its reserve refuses exactly
that attempt's reserve. Old journals (no attempts) replay and verify unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.vault.decide import Ledger, approve, deny, deposit, expire, release, reserve, settle
from actors.vault.fold import LedgerViolation, apply_event, check_invariants, fold, next_events
from schemas.ledger import LedgerEvent, Reserved, Tombstoned, event_hash, verify_chain
from schemas.vault import AgentPolicy
from tests.vault.test_vault_fold import T0, TTL, do, env, err, funded

OLD_JOURNAL = Path(__file__).with_name("data") / "ledger_before_attempts.jsonl"
# The last event's hash when that journal was written (before attempts existed): it must not move.
OLD_LAST_HASH = "0093446851d5bf21bed955942c28d5077bd67d2148e45dd35ee05d6267bdb213"


def test_a_journal_written_before_attempts_replays_and_verifies() -> None:
    events = [LedgerEvent.model_validate_json(line) for line in OLD_JOURNAL.read_text().splitlines()]
    assert verify_chain(events) == (True, None)
    state = fold(events)
    assert (state.last_hash, event_hash(events[-1])) == (OLD_LAST_HASH, OLD_LAST_HASH)
    check_invariants(state)
    assert (state.available_msat, state.resolutions["r2"].kind, set(state.tombstones["r3"])) == (
        864_950, "released", {""})
    # Its holds carried no attempt; the rules for callers naming none still apply to them (the actor answers
    # that repeat 409 request_id_reused).
    assert reserve(state, "r2", env(5), T0 + 9_000, ttl_ms=TTL).noop == "duplicate"
    assert err(lambda: reserve(state, "r3", env(5), T0 + 9_000, ttl_ms=TTL, attempt="n1")).code == \
        "request_released"
    # ... and a gateway naming attempts may retry the released r2.
    ledger = Ledger("agt_old", events)
    do(ledger, reserve(ledger.state, "r2", env(5), T0 + 9_000, ttl_ms=TTL, attempt="n1"))
    assert ledger.state.holds["r2"].earlier_attempts == ("",)


def test_a_released_request_id_is_reserved_again_by_a_new_attempt() -> None:
    ledger = funded(100_000)
    do(ledger, reserve(ledger.state, "dup", env(10), T0, ttl_ms=TTL, attempt="a1"))
    do(ledger, release(ledger.state, "dup", "upstream 502", T0, attempt="a1"))
    (event,) = do(ledger, reserve(ledger.state, "dup", env(10), T0 + 1, ttl_ms=TTL, attempt="a2"))
    assert isinstance(event.body, Reserved) and event.body.attempt == "a2"
    assert event.op_id == "reserve:dup#a2"
    do(ledger, settle(ledger.state, "dup", 7_000, T0 + 2, attempt="a2"))
    s = ledger.state
    assert (s.spent_msat, s.available_msat, s.resolutions["dup"].kind) == (7_000, 93_000, "settled")
    # The first attempt's release, delivered again, changes nothing; nor does a settle naming it.
    assert release(s, "dup", "again", T0 + 3, attempt="a1").noop == "duplicate"
    assert settle(s, "dup", 99, T0 + 3, attempt="a1").noop == "resolved"
    assert fold(ledger.events, "agent1") == ledger.state
    assert verify_chain(ledger.events) == (True, None)


def test_a_late_reserve_of_a_released_attempt_is_refused_and_a_new_attempt_is_not() -> None:
    """The gateway timed out on reserve a1 and released it; NATS delivers the buffered reserve later."""
    ledger = funded(100_000)
    (tomb,) = do(ledger, release(ledger.state, "late", "reserve failed", T0, attempt="a1"))
    assert isinstance(tomb.body, Tombstoned) and tomb.body.attempt == "a1"
    e = err(lambda: reserve(ledger.state, "late", env(10), T0 + 1, ttl_ms=TTL, attempt="a1"))
    assert (e.status, e.code) == (409, "request_released")  # the request the client saw fail is never charged
    do(ledger, reserve(ledger.state, "late", env(10), T0 + 2, ttl_ms=TTL, attempt="a2"))  # the client's retry
    assert ledger.state.holds["late"].attempt == "a2"
    # A release naming a third attempt that never reserved tombstones that one and leaves the open hold alone.
    do(ledger, release(ledger.state, "late", "reserve failed", T0 + 3, attempt="a3"))
    assert ledger.state.holds["late"].attempt == "a2" and set(ledger.state.tombstones["late"]) == {"a1", "a3"}
    assert err(lambda: reserve(ledger.state, "late", env(1), T0 + 4, ttl_ms=TTL, attempt="a3")).code == \
        "request_released"
    check_invariants(ledger.state)


@pytest.mark.parametrize("end", ["settle", "expire_charge", "open", "awaiting"])
def test_a_charged_or_in_flight_request_id_stays_409(end: str) -> None:
    ledger = funded(100_000, AgentPolicy(approval_over_msat=50_000, approval_timeout_s=60))
    do(ledger, reserve(ledger.state, "r", env(80 if end == "awaiting" else 10), T0, ttl_ms=TTL, attempt="a1"))
    later = T0 + TTL
    if end == "settle":
        do(ledger, settle(ledger.state, "r", 0, T0, attempt="a1"))  # even a settle of 0: the upstream served it
    elif end == "expire_charge":
        do(ledger, expire(ledger.state, "r", later, "charge"), later)
    e = err(lambda: reserve(ledger.state, "r", env(1), later, ttl_ms=TTL, attempt="a2"))
    assert (e.status, e.code, e.headers.get("x-should-retry")) == (409, "request_id_reused", "false")


@pytest.mark.parametrize("end", ["release", "deny", "expire_release"])
def test_every_end_that_charged_nothing_frees_the_id(end: str) -> None:
    ledger = funded(100_000, AgentPolicy(approval_over_msat=50_000, approval_timeout_s=60))
    do(ledger, reserve(ledger.state, "r", env(80 if end == "deny" else 10), T0, ttl_ms=TTL, attempt="a1"))
    later = T0 + TTL
    if end == "release":
        do(ledger, release(ledger.state, "r", "", T0, attempt="a1"))
    elif end == "deny":
        do(ledger, deny(ledger.state, "r", "no", T0))
    else:
        do(ledger, expire(ledger.state, "r", later, "release"), later)
    do(ledger, reserve(ledger.state, "r", env(1), later, ttl_ms=TTL, attempt="a2"), later)
    assert ledger.state.holds["r"].earlier_attempts == ("a1",)
    assert fold(ledger.events, "agent1") == ledger.state


def test_an_approval_of_a_retried_id_acts_on_its_new_hold() -> None:
    ledger = funded(200_000, AgentPolicy(approval_over_msat=50_000, approval_timeout_s=60))
    do(ledger, reserve(ledger.state, "r", env(80), T0, ttl_ms=TTL, attempt="a1"))
    do(ledger, deny(ledger.state, "r", "no", T0))
    do(ledger, reserve(ledger.state, "r", env(80), T0 + 1, ttl_ms=TTL, attempt="a2"))
    (event,) = do(ledger, approve(ledger.state, "r", T0 + 2))
    assert (event.op_id, event.body.attempt, ledger.state.holds["r"].state) == ("approve:r#a2", "a2", "held")


def test_a_caller_naming_no_attempt_keeps_the_old_rules() -> None:
    """Tools and older gateways: a second reserve of a rid is a 409, and a release before the reserve refuses
    every later reserve of the rid (whichever attempt: the release named none)."""
    ledger = funded(100_000)
    do(ledger, reserve(ledger.state, "old", env(10), T0, ttl_ms=TTL))
    do(ledger, release(ledger.state, "old", "", T0))
    assert reserve(ledger.state, "old", env(10), T0, ttl_ms=TTL).noop == "duplicate"  # the actor's 409
    do(ledger, release(ledger.state, "gone", "", T0))
    for attempt in ("", "x1"):
        assert err(lambda: reserve(ledger.state, "gone", env(1), T0, ttl_ms=TTL, attempt=attempt)).code == \
            "request_released"
    # A release naming no attempt acts on the open hold, whichever attempt made it.
    do(ledger, reserve(ledger.state, "new", env(10), T0, ttl_ms=TTL, attempt="n1"))
    (event,) = do(ledger, release(ledger.state, "new", "tool", T0))
    assert (event.body.kind, event.body.attempt) == ("released", "n1")


def _forge(ledger: Ledger, op_id: str, body: object) -> LedgerEvent:
    (event,) = next_events(ledger.state, op_id, [body], T0)  # type: ignore[list-item]
    return event


def test_the_fold_refuses_what_a_rid_history_forbids() -> None:
    ledger = funded(100_000)
    do(ledger, reserve(ledger.state, "r", env(10), T0, ttl_ms=TTL, attempt="a1"))
    do(ledger, release(ledger.state, "r", "", T0, attempt="a1"))
    do(ledger, release(ledger.state, "t", "", T0, attempt="b1"))
    refused = [
        ("reserve again the attempt that was released", Reserved(rid="r", attempt="a1", amount_msat=1,
                                                                 output_tokens=1, expires_at_ms=T0)),
        ("reserve a tombstoned attempt", Reserved(rid="t", attempt="b1", amount_msat=1, output_tokens=1,
                                                 expires_at_ms=T0)),
        ("tombstone an attempt that was reserved", Tombstoned(rid="r", attempt="a1")),
        ("tombstone an attempt twice", Tombstoned(rid="t", attempt="b1")),
        ("tombstone a known rid naming no attempt", Tombstoned(rid="r")),
    ]
    for why, body in refused:
        with pytest.raises(LedgerViolation):
            apply_event(ledger.state.copy(), _forge(ledger, "forged", body))
        assert why
    do(ledger, reserve(ledger.state, "r", env(10), T0, ttl_ms=TTL, attempt="a2"))
    from schemas.ledger import Settled
    wrong = Settled(rid="r", attempt="a1", cost_msat=1, charged_msat=1, uncollectible_msat=0)
    with pytest.raises(LedgerViolation, match="attempt"):
        apply_event(ledger.state.copy(), _forge(ledger, "settle:r#a1", wrong))


def test_deposits_stop_at_all_the_bitcoin_there_is() -> None:
    from schemas.money import MAX_MSAT
    ledger = funded(0)
    do(ledger, deposit(ledger.state, "d1", MAX_MSAT - 5, "simulated", "", T0))
    e = err(lambda: deposit(ledger.state, "d2", 6, "simulated", "", T0))
    assert (e.status, e.code, e.param) == (409, "deposit_limit_exceeded", "amount_msat")
    e = err(lambda: deposit(funded(0).state, "d3", 10, "simulated", "", T0, vault_deposited_msat=MAX_MSAT))
    assert e.code == "deposit_limit_exceeded"  # the vault's total, not only the account's
    do(ledger, deposit(ledger.state, "d4", 5, "simulated", "", T0))  # up to the bound exactly
    # Money already received (a paid invoice) is credited whatever the bound: refusing would orphan it.
    do(ledger, deposit(ledger.state, "ln:x", 1_000, "lightning", "", T0, vault_deposited_msat=None))
    assert ledger.state.deposited_msat == MAX_MSAT + 1_000
