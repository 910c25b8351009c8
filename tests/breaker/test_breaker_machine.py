"""The breaker's pure state machine: transitions, probes, deadlines, and a property test that no slot leaks."""

from __future__ import annotations

from typing import Optional

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.breaker.machine import blocks, grant_probe, on_outcome, on_outcomes, tick
from schemas.breaker import BreakerState, Outcome, OutcomeKind
from schemas.config import BreakerConfig

CFG = BreakerConfig(failure_threshold=3, cooldown_s=30, probe_timeout_s=10)
T0 = 1_700_000_000_000


def out(kind: OutcomeKind, rid: str = "r", *, probe: bool = False, retry_after_s: Optional[float] = None,
        status: Optional[int] = None) -> Outcome:
    return Outcome(provider="p", request_id=rid, kind=kind, probe=probe, retry_after_s=retry_after_s, status=status)


def fresh() -> BreakerState:
    return BreakerState(provider="p")


def opened(now: int = T0) -> BreakerState:
    s = fresh()
    for i in range(CFG.failure_threshold):
        s = on_outcome(s, out("http_5xx", f"f{i}", status=500), now, CFG)
    assert s.state == "open"
    return s


def half_open() -> tuple[BreakerState, int]:
    now = T0 + 30_000
    s = tick(opened(), now, CFG)
    assert s.state == "half_open" and s.probe_id is None
    return s, now


# --- closed → open -----------------------------------------------------------------------------------------


def test_opens_after_threshold_consecutive_failures_of_every_failure_kind() -> None:
    for kind in ("http_5xx", "connect", "timeout", "cut"):
        s = fresh()
        s = on_outcome(s, out(kind), T0, CFG)
        s = on_outcome(s, out(kind), T0 + 1, CFG)
        assert (s.state, s.consecutive_failures) == ("closed", 2)
        s = on_outcome(s, out(kind, status=503), T0 + 2, CFG)
        assert s.state == "open", kind
        assert (s.opened_at_ms, s.retry_at_ms) == (T0 + 2, T0 + 2 + 30_000)
        assert s.last_error is not None and s.last_error.startswith(kind)
        assert blocks(s, T0 + 2) and not blocks(s, T0 + 2 + 30_000)


def test_success_and_client_errors_reset_the_count() -> None:
    for reset in ("ok", "http_4xx"):
        s = fresh()
        s = on_outcome(s, out("http_5xx"), T0, CFG)
        s = on_outcome(s, out("timeout"), T0, CFG)
        s = on_outcome(s, out(reset, status=400 if reset == "http_4xx" else 200), T0, CFG)
        assert (s.state, s.consecutive_failures) == ("closed", 0)
        s = on_outcome(s, out("connect"), T0, CFG)
        s = on_outcome(s, out("connect"), T0, CFG)
        assert s.state == "closed"


def test_unchanged_state_is_the_same_object_and_keeps_its_timestamp() -> None:
    s = fresh()
    assert on_outcome(s, out("ok"), T0, CFG) is s
    assert tick(s, T0, CFG) is s
    assert grant_probe(s, "x", T0, CFG) == (s, True)  # closed: nothing to probe, nothing taken
    failed = on_outcome(s, out("http_5xx"), T0, CFG)
    assert failed is not s and failed.updated_at_ms == T0


def test_429_opens_at_once_for_its_retry_after_or_the_cooldown() -> None:
    s = on_outcome(fresh(), out("http_429", retry_after_s=2.5, status=429), T0, CFG)
    assert (s.state, s.retry_at_ms) == ("open", T0 + 2_500)
    s = on_outcome(fresh(), out("http_429", status=429), T0, CFG)
    assert (s.state, s.retry_at_ms) == ("open", T0 + 30_000)


def test_threshold_of_one() -> None:
    cfg = BreakerConfig(failure_threshold=1, cooldown_s=1)
    assert on_outcome(fresh(), out("timeout"), T0, cfg).state == "open"


# --- open ----------------------------------------------------------------------------------------------------


def test_late_outcomes_while_open_change_nothing_but_a_longer_429() -> None:
    s = opened()
    for kind in ("ok", "http_4xx", "http_5xx", "timeout"):
        assert on_outcome(s, out(kind), T0 + 5, CFG) is s
    assert on_outcome(s, out("http_429", retry_after_s=1), T0 + 5, CFG) is s  # shorter: no change
    longer = on_outcome(s, out("http_429", retry_after_s=60), T0 + 5, CFG)
    assert (longer.state, longer.retry_at_ms) == ("open", T0 + 5 + 60_000)


def test_open_refuses_probes_until_the_cooldown_then_goes_half_open() -> None:
    s = opened()
    assert grant_probe(s, "early", T0 + 29_999, CFG) == (s, False)
    assert tick(s, T0 + 29_999, CFG) is s
    h = tick(s, T0 + 30_000, CFG)
    assert (h.state, h.probe_id) == ("half_open", None)
    # grant_probe applies the time itself: the tick need not have been written first.
    g, granted = grant_probe(s, "first", T0 + 30_000, CFG)
    assert granted and (g.state, g.probe_id, g.probe_deadline_ms) == ("half_open", "first", T0 + 40_000)


# --- half-open -------------------------------------------------------------------------------------------------


def test_exactly_one_probe_at_a_time() -> None:
    s, now = half_open()
    s, granted = grant_probe(s, "a", now, CFG)
    assert granted
    for other in ("b", "c", "d"):
        assert grant_probe(s, other, now + 1, CFG) == (s, False)
    # The holder asking again (a retried request) keeps its slot.
    assert grant_probe(s, "a", now + 2, CFG) == (s, True)


def test_probe_success_closes() -> None:
    s, now = half_open()
    s, _ = grant_probe(s, "a", now, CFG)
    for kind in ("ok", "http_4xx"):
        c = on_outcome(s, out(kind, "a", probe=True), now + 100, CFG)
        assert (c.state, c.consecutive_failures, c.probe_id, c.retry_at_ms) == ("closed", 0, None, 0)


def test_probe_failure_opens_again_for_a_new_cooldown() -> None:
    s, now = half_open()
    s, _ = grant_probe(s, "a", now, CFG)
    o = on_outcome(s, out("connect", "a", probe=True), now + 100, CFG)
    assert (o.state, o.probe_id, o.retry_at_ms) == ("open", None, now + 100 + 30_000)
    o = on_outcome(s, out("http_429", "a", probe=True, retry_after_s=5), now + 100, CFG)
    assert (o.state, o.retry_at_ms) == ("open", now + 100 + 5_000)


def test_only_the_probe_holder_resolves_it() -> None:
    s, now = half_open()
    s, _ = grant_probe(s, "a", now, CFG)
    assert on_outcome(s, out("ok", "b"), now + 1, CFG) is s  # not a probe
    assert on_outcome(s, out("http_5xx", "b"), now + 1, CFG) is s
    assert on_outcome(s, out("ok", "b", probe=True), now + 1, CFG) is s  # a probe, but not the slot holder
    free, _ = half_open()
    assert on_outcome(free, out("ok", "a", probe=True), now, CFG) is free  # no slot taken: nothing to resolve


def test_an_expired_probe_frees_the_slot_and_its_late_outcome_is_ignored() -> None:
    s, now = half_open()
    s, _ = grant_probe(s, "slow", now, CFG)
    assert tick(s, now + 9_999, CFG) is s
    freed = tick(s, now + 10_000, CFG)
    assert (freed.state, freed.probe_id) == ("half_open", None)
    s2, granted = grant_probe(s, "next", now + 10_000, CFG)  # without a tick in between
    assert granted and s2.probe_id == "next"
    assert on_outcome(s2, out("ok", "slow", probe=True), now + 10_001, CFG) is s2


def test_batch_is_applied_in_order() -> None:
    batch = [out("http_5xx"), out("http_5xx"), out("ok"), out("http_5xx")]
    s = on_outcomes(fresh(), batch, T0, CFG)
    assert (s.state, s.consecutive_failures) == ("closed", 1)
    assert on_outcomes(fresh(), [out("timeout")] * 3, T0, CFG).state == "open"


# --- property: whatever happens, at most one live probe, and no slot outlives its deadline ---------------------

_KINDS: list[OutcomeKind] = ["ok", "http_5xx", "http_429", "http_4xx", "connect", "timeout", "cut"]
_step = st.one_of(
    st.tuples(st.just("advance"), st.integers(0, 45_000)),
    st.tuples(st.just("grant"), st.integers(0, 4)),
    st.tuples(st.just("outcome"), st.integers(0, 4), st.sampled_from(_KINDS), st.booleans()),
    st.tuples(st.just("tick")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_step, max_size=60), st.integers(1, 4))
def test_no_probe_slot_leaks_and_no_two_probes_overlap(steps: list[tuple], threshold: int) -> None:
    cfg = BreakerConfig(failure_threshold=threshold, cooldown_s=30, probe_timeout_s=10)
    s, now = fresh(), T0
    live: dict[str, int] = {}  # granted half-open probes not yet resolved: id -> deadline
    for step in steps:
        if step[0] == "advance":
            now += step[1]
        elif step[0] == "tick":
            s = tick(s, now, cfg)
        elif step[0] == "grant":
            before = tick(s, now, cfg)
            s, granted = grant_probe(s, f"r{step[1]}", now, cfg)
            if granted and before.state == "half_open":
                live[f"r{step[1]}"] = s.probe_deadline_ms
        else:
            _, who, kind, probe = step
            rid = f"r{who}"
            s = on_outcome(s, out(kind, rid, probe=probe, retry_after_s=1.0), now, cfg)
            if probe:
                live.pop(rid, None)
        live = {k: d for k, d in live.items() if d > now and s.state == "half_open"}
        assert len(live) <= 1, live
        # Structural invariants of every state.
        if s.state == "closed":
            assert s.probe_id is None and s.retry_at_ms == 0 and s.consecutive_failures < threshold
        elif s.state == "open":
            assert s.probe_id is None and s.retry_at_ms >= s.opened_at_ms
        elif s.probe_id is not None:
            assert s.probe_deadline_ms <= now + 10_000
        # However the request holding a slot ended, once its deadline passes the slot is free.
        later = tick(s, now + 10_000, cfg)
        assert later.probe_id is None or later.state != "half_open"
        if s.state != "closed":
            assert grant_probe(s, "newcomer", max(now, s.retry_at_ms) + 10_000, cfg)[1]
