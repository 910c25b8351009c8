"""One RequestRecord per request as it ends, published fire-and-forget for the vault's reports."""

from __future__ import annotations

import logging
from typing import Any, Optional

from nats.aio.client import Client as NATS

from schemas import subjects
from schemas.money import cost_msat
from schemas.requests import PinnedCost, RequestRecord
from schemas.router import RouteReply

from .meter import Usage

log = logging.getLogger("arbstr.gateway")


def baseline_msat(route: RouteReply, input_tokens: int, output_tokens: int) -> int:
    """What the same tokens would have cost at the route's most expensive candidate: the savings baseline."""
    return max((cost_msat(input_tokens, output_tokens, c.input_rate, c.output_rate, c.base_fee_msat)
                for c in route.candidates), default=0)


def pinned_costs(route: RouteReply, input_tokens: int, output_tokens: int) -> list[PinnedCost]:
    """The same tokens at every offer able to serve the request: /v1/stats finds the cheapest single one."""
    seen: dict[tuple[str, str], PinnedCost] = {}
    for c in route.candidates:
        seen.setdefault((c.provider, c.model), PinnedCost(
            provider=c.provider, model=c.model,
            cost_msat=cost_msat(input_tokens, output_tokens, c.input_rate, c.output_rate, c.base_fee_msat)))
    return list(seen.values())


def explanation_fields(route: RouteReply) -> dict[str, Any]:
    """The tier decision's explanation, as the request record carries it."""
    x = route.explanation
    if x is None:
        return {}
    return {"predicted_tier": x.predicted_tier, "tier_confidence": x.confidence, "tier_scorer": x.scorer,
            "tier_features": x.top_features}


def request_record(*, request_id: str, agent_id: Optional[str], endpoint: str, route: RouteReply,
                   usage: Optional[Usage], status: int, success: bool, streamed: bool, latency_ms: float,
                   overhead_ms: float, at_ms: int, provider: Optional[str] = None) -> RequestRecord:
    """``usage`` None: nothing was served or billed (the hold was released)."""
    common = dict(request_id=request_id, agent_id=agent_id, endpoint=endpoint, model=route.model, tier=route.tier,
                  status=status, success=success, streamed=streamed, latency_ms=max(0.0, latency_ms),
                  overhead_ms=max(0.0, overhead_ms), at_ms=at_ms, **explanation_fields(route))
    if usage is None:
        return RequestRecord(**common, provider=provider)  # type: ignore[arg-type]
    return RequestRecord(**common, provider=usage.provider, upstream_model=usage.model,  # type: ignore[arg-type]
                         input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                         cost_msat=usage.cost_msat,
                         baseline_msat=max(usage.cost_msat,
                                           baseline_msat(route, usage.input_tokens, usage.output_tokens)),
                         pinned_costs=pinned_costs(route, usage.input_tokens, usage.output_tokens),
                         estimated=usage.estimated, provider_cost_msat=usage.provider_cost_msat,
                         cost_drift=usage.cost_drift)


async def publish_record(nc: NATS, record: RequestRecord) -> None:
    # Core publish only appends to the connection's buffer: no round trip, and a lost record costs no money.
    try:
        await nc.publish(subjects.requests(record.agent_id), record.model_dump_json().encode())
    except Exception:
        log.debug("could not publish request record %s", record.request_id, exc_info=True)
