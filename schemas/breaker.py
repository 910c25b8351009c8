"""Breaker state (KV ``arbstr_breakers``, key = provider) and the outcome event of every upstream attempt."""

from __future__ import annotations

from typing import Literal, Optional

from .common import Message

BreakerStatus = Literal["closed", "open", "half_open"]
OutcomeKind = Literal["ok", "http_5xx", "http_429", "http_4xx", "connect", "timeout", "cut"]


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
