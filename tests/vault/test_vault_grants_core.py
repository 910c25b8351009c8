"""Grants in the vault's pure core: a slice of the balance held for a gateway, requests drawn from it and
settled or released one by one, the rest given back or expired; the books balance at every step."""

from __future__ import annotations

import pytest

from actors.vault import decide
from actors.vault.decide_grants import close_grant, draw_release, draw_settle, grant_rid, open_grant
from actors.vault.fold import AccountState, apply_event, check_invariants, next_events
from schemas.errors import ArbstrError
from schemas.vault import AgentPolicy

T0 = 1_700_000_000_000


def run(state: AccountState, d: decide.Decided, at: int = T0) -> AccountState:
    for e in next_events(state, d.op_id, d.bodies, at):
        apply_event(state, e, chained=True)
    check_invariants(state)
    return state


def agent(deposit: int = 100_000, policy: AgentPolicy | None = None) -> AccountState:
    s = AccountState(agent_id="a")
    run(s, decide.create_agent(s, "a", "h" * 64, policy or AgentPolicy(), T0))
    if deposit:
        run(s, decide.deposit(s, "d1", deposit, "sim", "", T0, 0))
    return s


def test_a_grant_holds_what_is_there_and_requests_are_charged_from_it() -> None:
    s = agent(10_000)
    run(s, open_grant(s, "g1", 50_000, 100, T0, ttl_ms=60_000))  # half of what is there: another gateway gets some
    assert s.holds[grant_rid("g1")].amount_msat == 5_000 and s.available_msat == 5_000 and s.pending_msat == 5_000
    run(s, draw_settle(s, "g1", "r1", "x1", 300, T0, provider="p", model="m", input_tokens=5, output_tokens=7))
    assert s.spent_msat == 300 and s.pending_msat == 4_700 and s.holds[grant_rid("g1")].amount_msat == 4_700
    assert s.resolutions["r1"].kind == "settled" and s.resolutions["r1"].charged_msat == 300
    run(s, draw_release(s, "g1", "r2", "x2", "upstream failed", T0))
    assert s.resolutions["r2"].kind == "released" and s.spent_msat == 300
    run(s, close_grant(s, "g1", T0))
    assert s.available_msat == 9_700 and s.pending_msat == 0 and grant_rid("g1") not in s.holds
    run(s, open_grant(s, "g2", 50_000, 9_000, T0, ttl_ms=60_000))  # never less than the request needs
    assert s.holds[grant_rid("g2")].amount_msat == 9_000


def test_a_report_delivered_twice_charges_once() -> None:
    s = agent()
    run(s, open_grant(s, "g1", 5_000, 1, T0, ttl_ms=60_000))
    run(s, draw_settle(s, "g1", "r1", "x1", 300, T0))
    again = draw_settle(s, "g1", "r1", "x1", 300, T0)
    assert again.noop == "duplicate" and s.spent_msat == 300


def test_a_request_id_used_before_is_still_charged_under_its_own_rid() -> None:
    s = agent()
    run(s, decide.reserve(s, "r1", decide_envelope(), T0, ttl_ms=60_000, attempt="old"))
    run(s, decide.settle(s, "r1", 50, T0, attempt="old"))
    run(s, open_grant(s, "g1", 5_000, 1, T0, ttl_ms=60_000))
    run(s, draw_settle(s, "g1", "r1", "new", 70, T0))
    assert s.spent_msat == 120 and s.resolutions["r1~new"].charged_msat == 70


def test_an_overrun_beyond_the_grant_comes_from_available_then_is_uncollectible() -> None:
    s = agent(1_000)
    run(s, open_grant(s, "g1", 600, 600, T0, ttl_ms=60_000))
    run(s, draw_settle(s, "g1", "r1", "x1", 900, T0))  # 600 from the grant, 300 of the 400 available
    assert s.spent_msat == 900 and s.available_msat == 100 and s.pending_msat == 0
    run(s, draw_settle(s, "g1", "r2", "x2", 250, T0))  # the grant is empty: 100 available, 150 uncollectible
    assert s.spent_msat == 1_000 and s.uncollectible_msat == 150 and s.available_msat == 0


def test_a_report_after_the_grant_is_gone_is_still_charged() -> None:
    s = agent(1_000)
    run(s, open_grant(s, "g1", 600, 600, T0, ttl_ms=60_000))
    run(s, close_grant(s, "g1", T0))
    run(s, draw_settle(s, "g1", "r1", "x1", 200, T0))
    assert s.spent_msat == 200 and s.available_msat == 800


def test_an_unreported_grant_expires_like_a_hold_charged_and_flagged() -> None:
    s = agent(1_000)
    run(s, open_grant(s, "g1", 600, 600, T0, ttl_ms=60_000))
    with pytest.raises(ArbstrError):
        decide.expire(s, grant_rid("g1"), T0 + 1_000)  # not due
    run(s, decide.expire(s, grant_rid("g1"), T0 + 60_000), T0 + 60_000)
    assert s.spent_msat == 600 and s.resolutions[grant_rid("g1")].kind == "expired"


def test_a_grant_fits_the_daily_limit_and_counts_against_it() -> None:
    s = agent(100_000, AgentPolicy(daily_limit_msat=3_000))
    run(s, open_grant(s, "g1", 50_000, 100, T0, ttl_ms=60_000))
    assert s.pending_msat == 3_000
    with pytest.raises(ArbstrError) as e:
        open_grant(s, "g2", 50_000, 100, T0, ttl_ms=60_000)
    assert e.value.status == 429
    with pytest.raises(ArbstrError) as e:
        decide.reserve(s, "r9", decide_envelope(), T0, ttl_ms=60_000, attempt="a")
    assert e.value.status == 429


def test_no_grant_below_its_minimum() -> None:
    s = agent(50)
    with pytest.raises(ArbstrError) as e:
        open_grant(s, "g1", 5_000, 100, T0, ttl_ms=60_000)
    assert e.value.status == 402


def decide_envelope():  # type: ignore[no-untyped-def]
    from schemas.router import Envelope

    return Envelope(input_tokens=10, output_tokens=10, input_rate=1_000_000, output_rate=1_000_000,
                    max_output_tokens=10)


def test_a_report_after_the_grant_expired_charged_is_covered_by_that_charge() -> None:
    s = agent(1_000)
    run(s, open_grant(s, "g1", 600, 600, T0, ttl_ms=60_000))
    run(s, decide.expire(s, grant_rid("g1"), T0 + 60_000), T0 + 60_000)
    assert s.spent_msat == 600
    run(s, draw_settle(s, "g1", "r1", "x1", 200, T0 + 61_000), T0 + 61_000)
    assert s.spent_msat == 600 and s.available_msat == 400  # charged once: by the expiry
    assert s.resolutions["r1"].kind == "settled" and s.resolutions["r1"].charged_msat == 0


def test_nothing_is_drawn_from_a_grant_the_agent_never_had() -> None:
    s = agent(1_000)
    for d in (lambda: draw_settle(s, "nope", "r1", "x1", 200, T0), lambda: draw_release(s, "nope", "r1", "x1", "", T0)):
        with pytest.raises(ArbstrError) as e:
            d()
        assert e.value.code == "unknown_grant"
    assert s.spent_msat == 0 and s.available_msat == 1_000


def test_a_request_decided_under_a_grant_holds_what_the_vault_would_hold() -> None:
    """The gateway's local sizing equals the vault's reserve for an agent whose balance is not the limit, for any
    envelope and policy caps; a request the policy would not allow at once is never decided locally."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from gateway.grant_meter import allowed_locally, local_hold
    from schemas.router import Envelope

    caps = st.one_of(st.none(), st.integers(1, 10**9))

    @settings(max_examples=300, deadline=None)
    @given(inp=st.integers(0, 200_000), out=st.one_of(st.none(), st.integers(1, 100_000)),
           rate_in=st.integers(0, 100_000), rate_out=st.integers(0, 100_000), fee=st.integers(0, 5_000),
           ceiling=st.integers(1, 100_000), choices=st.integers(1, 8), max_tx=caps, approval=caps)
    def check(inp, out, rate_in, rate_out, fee, ceiling, choices, max_tx, approval) -> None:  # type: ignore[no-untyped-def]
        env = Envelope(input_tokens=inp, output_tokens=out, input_rate=rate_in, output_rate=rate_out,
                       base_fee_msat=fee, max_output_tokens=ceiling, choices=choices)
        policy = AgentPolicy(max_tx_msat=max_tx, approval_over_msat=approval)
        amount, tokens = local_hold(env, policy)
        s = agent(0, policy)
        run(s, decide.deposit(s, "d", 10**15, "sim", "", T0, 0))
        try:
            d = decide.reserve(s, "r", env, T0, ttl_ms=60_000, attempt="a")
        except ArbstrError:
            assert not allowed_locally(policy, amount)  # the vault refuses: so does the grant (it asks the vault)
            return
        held = d.bodies[0]
        if held.state == "held":
            assert (amount, tokens) == (held.amount_msat, held.output_tokens)
        else:
            assert not allowed_locally(policy, amount)  # needs approval: never decided locally

    check()


def test_a_grant_given_up_before_it_came_is_never_opened() -> None:
    """The gateway's grant request timed out there: it closes that grant id at once. Should the request still be
    delivered after the close, it is refused — never a hold nobody uses until it expires charged."""
    s = agent(1_000)
    run(s, close_grant(s, "late", T0))
    with pytest.raises(ArbstrError) as e:
        open_grant(s, "late", 600, 600, T0, ttl_ms=60_000)
    assert e.value.code == "grant_closed" and s.pending_msat == 0
    assert close_grant(s, "late", T0).noop == "resolved"  # closing again decides nothing
    run(s, open_grant(s, "g2", 600, 600, T0, ttl_ms=60_000))
    run(s, close_grant(s, "g2", T0))  # an opened one is given back as before
    assert s.available_msat == 1_000 and s.pending_msat == 0
