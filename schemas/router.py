"""Messages of ``arbstr.v1.router.route``."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from .common import Complexity, Message, Msat, Rate, Tier

Endpoint = Literal["chat", "completions", "embeddings", "responses"]

# The router sees a summary, not the whole body: bodies may exceed the NATS payload limit.
MAX_TEXT_CHARS = 32_768


class RouteRequest(Message):
    request_id: str
    endpoint: Endpoint = "chat"
    model: str
    last_user_text: str = Field("", description="last user message, truncated: keyword policies match it")
    text_sample: str = Field("", description="all message text, truncated: complexity features read it")
    input_tokens: int = Field(ge=0, description="local estimate over the whole prompt")
    turns: int = Field(0, ge=0)
    max_tokens: Optional[int] = Field(None, ge=1)
    stream: bool = False
    tools: bool = False
    policy: Optional[str] = None
    complexity: Optional[Complexity] = None


class Candidate(Message):
    provider: str
    model: str = Field(description="the model name sent upstream")
    input_rate: Rate
    output_rate: Rate
    base_fee_msat: Msat = 0
    tier: Tier
    estimated_cost_msat: Msat
    probe: bool = Field(False, description="breaker half-open: ask arbstr.v1.breaker.probe before trying it")
    quiet: bool = Field(False, description="breaker closed with no failures counted: a success would change "
                                            "nothing, so the gateway need not report it")


class Envelope(Message):
    """What a reservation must cover: the rates of the candidate about to be called over this request's token
    budget. Falling over to a costlier candidate, the gateway extends the hold first (or skips that candidate)."""

    input_tokens: int = Field(ge=0)
    output_tokens: Optional[int] = Field(None, ge=1, description="the client's max_tokens; None: the vault sizes it")
    input_rate: Rate
    output_rate: Rate
    base_fee_msat: Msat = 0
    max_output_tokens: int = Field(ge=1, description="ceiling of the output budget when output_tokens is None")


class RouteReply(Message):
    request_id: str
    model: str = Field(description="the model the client asked for")
    policy: Optional[str] = None
    tier: Tier
    complexity: Complexity
    complexity_score: int = 0
    candidates: list[Candidate]
    envelope: Envelope
