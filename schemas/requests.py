"""The request log: one record per request the gateway served or refused after routing, and the report
queries the vault answers from its DuckDB projection of them."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from .common import MAX_EPOCH_MS, Message, Msat, Tier
from .router import FeatureWeight, Scorer

GroupBy = Literal["model", "provider", "tier", "agent", "day"]
SortKey = Literal["at", "cost", "latency"]
MAX_LIMIT = 1000
# What /v1/stats measures savings against (named in every row): the cheapest single offer (provider and model)
# that could have served every billed request of the row — what a client pinning one provider would have paid
# without degrading any answer. Rows where no single offer could (or records from before offers were kept) fall
# back to each request's costliest candidate, and say so.
SavingsBaseline = Literal["cheapest_single_provider", "costliest_candidate"]


class PinnedCost(Message):
    """What this request would have cost at one offer able to serve it (a route candidate)."""

    provider: str
    model: str
    cost_msat: Msat


class RequestRecord(Message):
    """Published by the gateway when a request ends; ``agent_id`` is None in free mode."""

    request_id: str
    agent_id: Optional[str] = None
    endpoint: str
    model: str = Field(description="the model the client asked for")
    provider: Optional[str] = Field(None, description="who served it (None: nobody did)")
    upstream_model: Optional[str] = None
    tier: str
    status: int = Field(description="the HTTP status the client got")
    success: bool
    streamed: bool
    input_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)
    cost_msat: Msat = 0
    baseline_msat: Msat = Field(0, description="the same tokens at the route's most expensive candidate")
    pinned_costs: list[PinnedCost] = Field(default_factory=list,
                                           description="the same tokens at every offer able to serve the request "
                                                       "(the route's candidates): the savings baseline's input")
    latency_ms: float = Field(ge=0)
    overhead_ms: float = Field(ge=0)
    at_ms: int = Field(ge=0)
    estimated: bool = False
    provider_cost_msat: Optional[Msat] = Field(None, description="what the provider says it charged arbstr (a "
                                                                 "Routstr node's usage.cost / X-Routstr-Cost-Msats)")
    cost_drift: bool = Field(False, description="provider_cost_msat is far from cost_msat: arbstr's rates are off")
    predicted_tier: Optional[Tier] = Field(None, description="the tier scorer's decision (None: not scored; `tier` "
                                                             "may differ when the client's X-Arbstr-Complexity set it)")
    tier_confidence: Optional[float] = Field(None, ge=0.0, le=1.0, description="the model's probability of that tier")
    tier_scorer: Optional[Scorer] = Field(None, description="trained, keywords, or skipped (a named model served at "
                                                            "one tier)")
    tier_features: list[FeatureWeight] = Field(default_factory=list,
                                               description="the features that pushed the decision most")


class StatsQuery(Message):
    group_by: Optional[GroupBy] = None
    model: Optional[str] = Field(None, description="only requests for this model (as the client asked for it)")
    provider: Optional[str] = Field(None, description="only requests this provider served")
    agent_id: Optional[str] = None
    token_hash: Optional[str] = Field(None, description="an agent's own report: the vault scopes it to that agent")
    since_ms: Optional[int] = Field(None, ge=0, le=MAX_EPOCH_MS)
    until_ms: Optional[int] = Field(None, ge=0, le=MAX_EPOCH_MS)


class StatsRow(Message):
    key: Optional[str] = Field(None, description="the group's value (None: the whole range)")
    requests: int
    succeeded: int
    failed: int
    streamed: int
    input_tokens: int
    output_tokens: int
    cost_msat: Msat
    baseline_msat: Msat = Field(description="the same requests at the baseline savings_baseline names")
    savings_msat: int = Field(description="baseline - cost (negative: routing cost more than the baseline)")
    savings_baseline: SavingsBaseline = "cheapest_single_provider"
    baseline_provider: Optional[str] = Field(None, description="the baseline's provider (cheapest_single_provider)")
    baseline_model: Optional[str] = Field(None, description="the baseline's model (cheapest_single_provider)")
    latency_p50_ms: Optional[float] = None
    latency_p95_ms: Optional[float] = None
    overhead_p50_ms: Optional[float] = None


class StatsReply(Message):
    group_by: Optional[GroupBy] = None
    rows: list[StatsRow]


class RequestsQuery(Message):
    model: Optional[str] = None
    provider: Optional[str] = None
    agent_id: Optional[str] = None
    token_hash: Optional[str] = Field(None, description="an agent's own report: the vault scopes it to that agent")
    success: Optional[bool] = None
    streamed: Optional[bool] = None
    since_ms: Optional[int] = Field(None, ge=0, le=MAX_EPOCH_MS)
    until_ms: Optional[int] = Field(None, ge=0, le=MAX_EPOCH_MS)
    sort: SortKey = "at"
    order: Literal["asc", "desc"] = "desc"
    limit: int = Field(100, ge=1, le=MAX_LIMIT)
    offset: int = Field(0, ge=0, le=10**9)


class RequestList(Message):
    total: int = Field(description="rows matching the filters, before limit/offset")
    items: list[RequestRecord]
