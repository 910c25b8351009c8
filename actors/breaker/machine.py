"""The circuit breaker of one provider, as pure functions over ``BreakerState``.

    closed ──N consecutive failures, or one 429──▶ open ──cool-down (or retry-after)──▶ half_open
    half_open ──its one probe succeeds──▶ closed          half_open ──its probe fails──▶ open

Failures are what the provider did wrong: 5xx, connect errors, timeouts, streams cut mid-way. A 4xx other than
429 is the client's mistake and, like ``ok``, proves the provider answers. In half_open only the probe's outcome
counts: other outcomes describe requests that started before, so they say nothing about the provider *now*.

Every function returns the state unchanged (the same object) when nothing changes, so callers persist only
real transitions; ``updated_at_ms`` moves only with them.
"""

from __future__ import annotations

import math
from typing import Any

from schemas.breaker import BreakerState, Outcome, OutcomeKind
from schemas.config import BreakerConfig

FAILURES: frozenset[OutcomeKind] = frozenset({"http_5xx", "refused", "connect", "timeout", "cut"})
SUCCESSES: frozenset[OutcomeKind] = frozenset({"ok", "http_4xx"})


def seconds_ms(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


def _with(current: BreakerState, now_ms: int, **changes: Any) -> BreakerState:
    if all(getattr(current, k) == v for k, v in changes.items()):
        return current
    return current.model_copy(update={**changes, "updated_at_ms": now_ms})


def _open(state: BreakerState, now_ms: int, retry_at_ms: int, error: str) -> BreakerState:
    return _with(state, now_ms, state="open", consecutive_failures=state.consecutive_failures + 1,
                 opened_at_ms=now_ms, retry_at_ms=retry_at_ms, probe_id=None, probe_deadline_ms=0, last_error=error)


def _close(state: BreakerState, now_ms: int) -> BreakerState:
    return _with(state, now_ms, state="closed", consecutive_failures=0, opened_at_ms=0, retry_at_ms=0,
                 probe_id=None, probe_deadline_ms=0)


def describe(outcome: Outcome) -> str:
    return f"{outcome.kind} (HTTP {outcome.status})" if outcome.status is not None else outcome.kind


def open_for_ms(outcome: Outcome, cfg: BreakerConfig) -> int:
    """How long a failure keeps the provider out: a 429's own retry-after, else the cool-down."""
    if outcome.kind == "http_429" and outcome.retry_after_s is not None:
        return seconds_ms(outcome.retry_after_s)
    return seconds_ms(cfg.cooldown_s)


def tick(state: BreakerState, now_ms: int, cfg: BreakerConfig) -> BreakerState:
    """Time passing: open → half_open once ``retry_at_ms`` is reached; a probe past its deadline frees the slot
    (whatever happened to the request that held it, the slot cannot stay taken)."""
    if state.state == "open" and now_ms >= state.retry_at_ms:
        return _with(state, now_ms, state="half_open", probe_id=None, probe_deadline_ms=0)
    if state.state == "half_open" and state.probe_id is not None and now_ms >= state.probe_deadline_ms:
        return _with(state, now_ms, probe_id=None, probe_deadline_ms=0)
    return state


def on_outcome(state: BreakerState, outcome: Outcome, now_ms: int, cfg: BreakerConfig) -> BreakerState:
    """The state after one upstream attempt's outcome."""
    state = tick(state, now_ms, cfg)
    kind = outcome.kind
    if state.state == "half_open":
        if not (outcome.probe and state.probe_id is not None and state.probe_id == outcome.request_id):
            return state
        if kind in SUCCESSES:
            return _close(state, now_ms)
        return _open(state, now_ms, now_ms + open_for_ms(outcome, cfg), describe(outcome))
    if state.state == "open":
        # Late reports of requests already under way when it opened change nothing, except a 429 asking for
        # more time than the cool-down gives.
        if kind == "http_429":
            until = now_ms + open_for_ms(outcome, cfg)
            if until > state.retry_at_ms:
                return _with(state, now_ms, retry_at_ms=until, last_error=describe(outcome))
        return state
    if kind in SUCCESSES:
        return _with(state, now_ms, consecutive_failures=0)
    if kind == "http_429":
        return _open(state, now_ms, now_ms + open_for_ms(outcome, cfg), describe(outcome))
    failures = state.consecutive_failures + 1
    if failures >= cfg.failure_threshold:
        return _open(state, now_ms, now_ms + seconds_ms(cfg.cooldown_s), describe(outcome))
    return _with(state, now_ms, consecutive_failures=failures, last_error=describe(outcome))


def on_outcomes(state: BreakerState, outcomes: list[Outcome], now_ms: int, cfg: BreakerConfig) -> BreakerState:
    """Several outcomes in arrival order: one read-modify-write of the stored state for a whole batch."""
    for outcome in outcomes:
        state = on_outcome(state, outcome, now_ms, cfg)
    return state


def grant_probe(state: BreakerState, probe_id: str, now_ms: int, cfg: BreakerConfig) -> tuple[BreakerState, bool]:
    """(state, granted): the one probe slot of a half-open provider, held until its outcome or its deadline.

    A closed provider needs no probe: granted, nothing taken. Asking again with the same ``probe_id`` (a
    retried request) gets the same answer, so a lost reply cannot take the slot twice.
    """
    state = tick(state, now_ms, cfg)
    if state.state == "closed":
        return state, True
    if state.state == "open":
        return state, False
    if state.probe_id is None:
        return _with(state, now_ms, probe_id=probe_id,
                     probe_deadline_ms=now_ms + seconds_ms(cfg.probe_timeout_s)), True
    return state, state.probe_id == probe_id


def blocks(state: BreakerState, now_ms: int) -> bool:
    """Whether the provider is out of rotation right now (open and its retry time not reached)."""
    return state.state == "open" and state.retry_at_ms > now_ms
