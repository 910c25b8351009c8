"""Messages of ``arbstr.v1.router.route``."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from .common import Complexity, Message, Msat, Rate, Tier

Endpoint = Literal["chat", "completions", "embeddings", "responses"]

# The router sees a summary, not the whole body: bodies may exceed the NATS payload limit.
MAX_TEXT_CHARS = 32_768
# Outputs one request may ask for (prompts × n or best_of): far above any real use, and it keeps sizes bounded.
MAX_CHOICES = 1_000_000


class RouteRequest(Message):
    request_id: str
    endpoint: Endpoint = "chat"
    model: str
    last_user_text: str = Field("", description="last user message, truncated: keyword policies match it")
    text_sample: str = Field("", description="all message text, truncated: complexity features read it")
    input_tokens: int = Field(ge=0, description="local estimate over the whole prompt")
    turns: int = Field(0, ge=0)
    max_tokens: Optional[int] = Field(None, ge=1, description="the output cap per choice, on the field the "
                                                               "endpoint's upstreams honour (the larger if two)")
    choices: int = Field(1, ge=1, le=MAX_CHOICES, description="outputs the upstream generates and bills: chat n; "
                                                             "completions prompts × max(n, best_of)")
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
    output_tokens: Optional[int] = Field(None, ge=1, description="the client's output cap per choice; None: the "
                                                                 "vault sizes it")
    input_rate: Rate
    output_rate: Rate
    base_fee_msat: Msat = 0
    max_output_tokens: int = Field(ge=1, description="ceiling of the output budget per choice when output_tokens "
                                                     "is None")
    choices: int = Field(1, ge=1, le=MAX_CHOICES, description="outputs generated: the hold covers the output "
                                                             "budget this many times")


Scorer = Literal["trained", "keywords", "skipped"]


class FeatureWeight(Message):
    name: str = Field(description="a feature of the request, e.g. lex:plang (a programming language is named), "
                                  "code:fence, len:4 (a prompt length band), w:regex (a word)")
    weight: float = Field(description="its push on the decision in log-odds: positive towards the higher tier")


class TierExplanation(Message):
    """Why the router chose the minimum tier it did."""

    scorer: Scorer = Field(description="trained: the tier model; keywords: the keyword points scorer; skipped: "
                                       "nothing was scored (a named model served at one tier, an embeddings input, "
                                       "no text)")
    predicted_tier: Optional[Tier] = Field(None, description="the scorer's tier (an X-Arbstr-Complexity override "
                                                             "may have replaced it)")
    confidence: Optional[float] = Field(None, ge=0.0, le=1.0, description="the model's probability of that tier")
    probabilities: dict[str, float] = Field(default_factory=dict, description="per tier (trained scorer)")
    top_features: list[FeatureWeight] = Field(default_factory=list)
    overridden: bool = Field(False, description="the client's X-Arbstr-Complexity header set the tier")


class RouteReply(Message):
    request_id: str
    model: str = Field(description="the model the client asked for")
    policy: Optional[str] = None
    tier: Tier
    complexity: Complexity
    complexity_score: int = Field(0, description="keywords scorer: its points; trained scorer: the expected need "
                                                 "from 0 (surely local) to 100 (surely frontier)")
    explanation: Optional[TierExplanation] = None
    candidates: list[Candidate]
    envelope: Envelope
