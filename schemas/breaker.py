"""Breaker state (KV ``arbstr_breakers``, key = provider) and the outcome event of every upstream attempt."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from .common import Message

BreakerStatus = Literal["closed", "open", "half_open"]
OutcomeKind = Literal["ok", "http_5xx", "http_429", "http_4xx", "refused", "connect", "timeout", "cut"]


class BreakerState(Message):
    provider: str
    state: BreakerStatus = "closed"
    consecutive_failures: int = 0
    opened_at_ms: int = 0
    retry_at_ms: int = 0
    probe_id: Optional[str] = None
    probe_deadline_ms: int = 0
    last_error: Optional[str] = None
    updated_at_ms: int = 0


class Outcome(Message):
    provider: str
    request_id: str
    kind: OutcomeKind
    status: Optional[int] = None
    retry_after_s: Optional[float] = None
    latency_ms: float = 0.0
    at_ms: int = 0
    probe: bool = False


class StateRequest(Message):
    """Request of ``arbstr.v1.breaker.state``: one provider, or every known one when ``provider`` is None."""

    provider: Optional[str] = None


class StateReply(Message):
    states: list[BreakerState]
    now_ms: int = Field(description="the breaker's clock: compare retry_at_ms and probe_deadline_ms with it")


class ProbeRequest(Message):
    """Request of ``arbstr.v1.breaker.probe``: may this request be the one probe of a half-open provider?"""

    provider: str
    probe_id: str = Field(min_length=1, max_length=256, description="the request id; its Outcome resolves the probe")


class ProbeReply(Message):
    provider: str
    granted: bool
    state: BreakerStatus = Field(description="the state after the decision")
    probe_id: Optional[str] = Field(None, description="who holds the probe slot now")
    probe_deadline_ms: int = 0
    retry_at_ms: int = 0
