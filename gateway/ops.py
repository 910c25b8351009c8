"""Operator views: ``GET /providers`` (what each provider costs, where its price comes from and, if it cannot be
routed to, why), ``POST /v1/admin/prices/{provider}/confirm`` (put prices the guard holds in force),
``POST /v1/cost`` (the route and cost estimate of a request, no upstream call) and ``GET /health`` (ok /
degraded / unhealthy, with each provider's breaker state; 503 when no provider is usable).

They read the same sources the request path does: the pricing table, the router, the breaker states.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal, Optional

from aiohttp import web
from pydantic import BaseModel, Field

from schemas import exchanges, subjects
from schemas.breaker import BreakerState, BreakerStatus, StateRequest
from schemas.common import Complexity, Tier
from schemas.errors import ArbstrError
from schemas.money import ceil_div, cost_msat
from schemas.pricing import (ConfirmRequest, HeldRate, ModelRate, PriceSource, ProviderKind, ProviderPrices,
                             TableRequest)
from schemas.router import Candidate, FeatureWeight, RouteReply, RouteRequest, TierExplanation

from .endpoints import CHAT, COMPLETIONS, EMBEDDINGS, EndpointSpec, validate
from actors.runtime.tokens import admin_token_hash

from .headers import route_overrides
from .http import REQUEST_ID, TRACE, bearer_token, json_response, read_json_object

if TYPE_CHECKING:
    from .app import Gateway

# Views for people and dashboards: an actor that does not answer soon is reported, not waited for.
OPS_TIMEOUT_S = 1.0
HEALTH_TIMEOUT_S = 0.5

HealthStatus = Literal["ok", "degraded", "unhealthy"]


# --- documents ----------------------------------------------------------------------------------------------
class BreakerView(BaseModel):
    state: BreakerStatus
    consecutive_failures: int
    retry_at_ms: int = 0
    retry_in_s: Optional[int] = None
    probe_in_flight: bool = False
    last_error: Optional[str] = None


class ProviderView(BaseModel):
    name: str
    kind: Optional[ProviderKind] = None  # configured | feed | routstr
    tier: Optional[Tier] = None
    models: list[str]
    input_rate: Optional[int] = None  # sats per 1M tokens
    output_rate: Optional[int] = None
    base_fee_msat: Optional[int] = None
    model_rates: dict[str, ModelRate] = {}
    context_length: Optional[int] = None
    supports_tools: Optional[bool] = None
    source: Optional[str] = None
    sources: list[PriceSource] = []  # each source and when it observed what it contributed
    updated_at_ms: Optional[int] = None
    url: Optional[str] = None  # market providers: where they are called
    mints: list[str] = []
    payable: bool = True  # False: a Routstr node the vault cannot pay (none of its mints is accepted)
    held: dict[str, HeldRate] = {}  # per model: a price the guard keeps out of force until confirmed
    breaker: Optional[BreakerView] = None
    routable: bool
    reasons: list[str]
    notes: list[str] = []  # what an operator should know even when it is routable


class ProvidersDocument(BaseModel):
    object: Literal["list"] = "list"
    data: list[ProviderView]
    breakers_available: bool
    prices_available: bool
    now_ms: int


class Reserve(BaseModel):
    amount_msat: int
    output_tokens: int
    output_budget: Literal["max_tokens", "ceiling"]
    input_rate: int
    output_rate: int
    base_fee_msat: int


class CostEstimate(BaseModel):
    object: Literal["arbstr.cost_estimate"] = "arbstr.cost_estimate"
    request_id: str
    model: str
    policy: Optional[str]
    tier: Tier
    complexity: Complexity
    complexity_score: int
    predicted_tier: Optional[Tier] = Field(None, description="the tier scorer's decision (None: nothing was scored)")
    confidence: Optional[float] = Field(None, description="the model's probability of the predicted tier")
    top_features: list[FeatureWeight] = Field(default_factory=list, description="what pushed the decision most")
    explanation: Optional[TierExplanation] = None
    input_tokens: int
    output_tokens: int
    estimated_cost_msat: int
    candidates: list[Candidate]
    reserve: Reserve


class ProviderHealth(BaseModel):
    state: Literal["closed", "open", "half_open", "unknown"]
    usable: bool
    retry_in_s: Optional[int] = None
    last_error: Optional[str] = None


class HealthDocument(BaseModel):
    status: HealthStatus
    nats: bool
    mode: Literal["paid", "free"]
    breakers_available: bool
    usable_providers: int
    providers: dict[str, ProviderHealth]


# --- pure pieces ----------------------------------------------------------------------------------------------
def breaker_open(state: Optional[BreakerState], now_ms: int) -> bool:
    """The router's rule: open keeps a provider out until its retry time; half-open lets a probe through."""
    return state is not None and state.state == "open" and state.retry_at_ms > now_ms


def seconds_until(at_ms: int, now_ms: int) -> int:
    return max(1, ceil_div(max(0, at_ms - now_ms), 1000))


def breaker_view(state: BreakerState, now_ms: int) -> BreakerView:
    blocked = breaker_open(state, now_ms)
    return BreakerView(state=state.state, consecutive_failures=state.consecutive_failures,
                       retry_at_ms=state.retry_at_ms if blocked else 0,
                       retry_in_s=seconds_until(state.retry_at_ms, now_ms) if blocked else None,
                       probe_in_flight=state.state == "half_open" and state.probe_id is not None,
                       last_error=state.last_error)


def held_note(provider: str, model: str, held: HeldRate, now_ms: int) -> str:
    return (f"price of {model} held by the guard since {max(0, now_ms - held.since_ms) // 1000} s: "
            f"{held.input_rate}/{held.output_rate} sats per 1M (in/out) proposed by {held.source}, "
            f"{held.previous_input_rate}/{held.previous_output_rate} stays in force; "
            f"confirm with POST /v1/admin/prices/{provider}/confirm")


def provider_views(configured: list[str], prices: Optional[list[ProviderPrices]],
                   breakers: Optional[dict[str, BreakerState]], now_ms: int,
                   callable_live: Optional[set[str]] = None) -> list[ProviderView]:
    """One view per provider this gateway is configured for or the price table names, with the reasons the
    router would not pick it (the pricing actor's, then this gateway's own) and notes for the operator.

    ``callable_live``: the market providers this gateway has a URL and key for (None: not checked)."""
    by_name = {p.provider: p for p in prices or []}
    names = sorted(set(configured) | set(by_name))
    views = []
    for name in names:
        p = by_name.get(name)
        state = (breakers or {}).get(name)
        reasons: list[str] = []
        if prices is None:
            reasons.append("price table unavailable: the pricing actor did not answer")
        elif p is None:
            reasons.append("no prices published for it: the router does not know it")
        if p is not None:
            reasons += p.reasons
        if name not in configured:
            if p is None or p.kind == "configured" or not p.url:
                reasons.append("not configured on this gateway: no URL or credentials to call it")
            elif p.routable and callable_live is not None and name not in callable_live:
                reasons.append("no credential on this gateway: its key is not in this gateway's config or "
                               "arbstr_provider_keys")
        if p is not None and not p.models and not p.reasons:
            reasons.append("serves no models (empty model list)")
        if breaker_open(state, now_ms):
            assert state is not None
            reasons.append(f"breaker open: circuit open for {seconds_until(state.retry_at_ms, now_ms)} s more"
                           + (f" after {state.last_error}" if state.last_error else ""))
        notes = list(p.notes) + [held_note(name, m, h, now_ms) for m, h in sorted(p.held.items())] if p else []
        views.append(ProviderView(
            name=name, kind=p.kind if p else None, tier=p.tier if p else None, models=list(p.models) if p else [],
            input_rate=p.input_rate if p else None, output_rate=p.output_rate if p else None,
            base_fee_msat=p.base_fee_msat if p else None, model_rates=dict(p.model_rates) if p else {},
            context_length=p.context_length if p else None, supports_tools=p.supports_tools if p else None,
            source=p.source if p else None, sources=list(p.sources) if p else [],
            updated_at_ms=p.updated_at_ms if p else None, url=p.url if p and p.kind != "configured" else None,
            mints=list(p.mints) if p else [], payable=p.payable if p else True, held=dict(p.held) if p else {},
            breaker=breaker_view(state or BreakerState(provider=name), now_ms) if breakers is not None else None,
            routable=not reasons, reasons=reasons, notes=notes))
    return views


def explanation_of(route: RouteReply) -> dict[str, Any]:
    """The tier decision's explanation as the cost estimate shows it."""
    x = route.explanation
    if x is None:
        return {}
    return {"predicted_tier": x.predicted_tier, "confidence": x.confidence, "top_features": x.top_features,
            "explanation": x}


def reserve_of(route: RouteReply) -> Reserve:
    """What a reservation for this route holds at most: the envelope over the client's max_tokens, or over the
    configured ceiling when it set none (the vault then reserves what the agent can afford, up to it)."""
    env = route.envelope
    out = (env.output_tokens if env.output_tokens is not None else env.max_output_tokens) * env.choices
    return Reserve(amount_msat=cost_msat(env.input_tokens, out, env.input_rate, env.output_rate, env.base_fee_msat),
                   output_tokens=out, output_budget="max_tokens" if env.output_tokens is not None else "ceiling",
                   input_rate=env.input_rate, output_rate=env.output_rate, base_fee_msat=env.base_fee_msat)


def health_of(configured: dict[str, bool], breakers: Optional[dict[str, BreakerState]], nats: bool,
              now_ms: int) -> tuple[HealthStatus, dict[str, ProviderHealth]]:
    """``configured`` maps each provider to whether it serves any model. Unhealthy: no NATS or no provider
    usable; degraded: some breaker not closed, or the breaker states unknown; else ok."""
    providers: dict[str, ProviderHealth] = {}
    for name, has_models in sorted(configured.items()):
        state = None if breakers is None else breakers.get(name, BreakerState(provider=name))
        blocked = breaker_open(state, now_ms)
        providers[name] = ProviderHealth(
            state=state.state if state is not None else "unknown", usable=has_models and not blocked,
            retry_in_s=seconds_until(state.retry_at_ms, now_ms) if state is not None and blocked else None,
            last_error=state.last_error if state is not None and state.state != "closed" else None)
    usable = sum(1 for p in providers.values() if p.usable)
    if not nats or usable == 0:
        return "unhealthy", providers
    if breakers is None or any(p.state != "closed" for p in providers.values()):
        return "degraded", providers
    return "ok", providers


def spec_for(body: dict[str, Any]) -> EndpointSpec:
    """A cost request is shaped like the request it prices: chat messages, a completion prompt or an input."""
    if "messages" in body:
        return CHAT
    if "prompt" in body:
        return COMPLETIONS
    if "input" in body:
        return EMBEDDINGS
    return CHAT  # validation then names the missing field


# --- handlers -------------------------------------------------------------------------------------------------
class Ops:
    def __init__(self, gw: "Gateway") -> None:
        self.gw = gw
        self.admin_hash = admin_token_hash(gw.config)

    async def _breakers(self, request_id: str, timeout_s: float) -> tuple[Optional[dict[str, BreakerState]], int]:
        """Every provider's breaker state and the breaker's clock; (None, local clock) when it does not answer."""
        try:
            reply = await self.gw.bus.ask(exchanges.BREAKER_STATE, StateRequest(), request_id=request_id,
                                          timeout_s=timeout_s)
        except ArbstrError:
            return None, int(time.time() * 1000)
        return {s.provider: s for s in reply.states}, reply.now_ms

    async def _prices(self, request_id: str) -> Optional[list[ProviderPrices]]:
        try:
            table = await self.gw.bus.ask(exchanges.PRICE_TABLE, TableRequest(), request_id=request_id,
                                          timeout_s=OPS_TIMEOUT_S, retries=1)
        except ArbstrError:
            return None
        return table.providers

    async def providers(self, request: web.Request) -> web.Response:
        rid = request[REQUEST_ID]
        prices, (breakers, now_ms) = await asyncio.gather(self._prices(rid), self._breakers(rid, OPS_TIMEOUT_S))
        doc = ProvidersDocument(
            data=provider_views([p.name for p in self.gw.config.providers], prices, breakers, now_ms,
                                self.gw.directory.live_names()),
            breakers_available=breakers is not None, prices_available=prices is not None, now_ms=now_ms)
        return json_response(doc.model_dump(mode="json"))

    async def cost(self, request: web.Request) -> web.Response:
        rid = request[REQUEST_ID]
        body = await read_json_object(request, self.gw.config.server.max_body_bytes)
        spec = spec_for(body)
        validate(spec, body)
        route = await self.gw.bus.ask(exchanges.ROUTE, route_request(request, body, spec, rid), request_id=rid,
                                      traceparent=request[TRACE], retries=1)
        env = route.envelope
        estimate = CostEstimate(
            request_id=rid, model=route.model, policy=route.policy, tier=route.tier, complexity=route.complexity,
            complexity_score=route.complexity_score, **explanation_of(route), input_tokens=env.input_tokens,
            output_tokens=env.output_tokens or self.gw.config.router.default_output_tokens,
            estimated_cost_msat=route.candidates[0].estimated_cost_msat, candidates=route.candidates,
            reserve=reserve_of(route))
        headers = {"x-arbstr-tier": route.tier, "x-arbstr-complexity": route.complexity}
        if route.policy:
            headers["x-arbstr-policy"] = route.policy
        return json_response(estimate.model_dump(mode="json"), headers=headers)

    async def health(self, request: web.Request) -> web.Response:
        nats_ok = self.gw.nc.is_connected
        breakers, now_ms = (await self._breakers(request[REQUEST_ID], HEALTH_TIMEOUT_S) if nats_ok
                            else (None, int(time.time() * 1000)))
        configured = {p.name: bool(p.models) for p in self.gw.config.providers}
        configured.update(self.gw.directory.live_usable())  # market providers this gateway can call
        status, providers = health_of(configured, breakers, nats_ok, now_ms)
        doc = HealthDocument(status=status, nats=nats_ok, mode="paid" if self.gw.meter.paid else "free",
                             breakers_available=breakers is not None,
                             usable_providers=sum(1 for p in providers.values() if p.usable), providers=providers)
        return json_response(doc.model_dump(mode="json"), status=503 if status == "unhealthy" else 200)


    async def confirm_prices(self, request: web.Request) -> web.Response:
        """``POST /v1/admin/prices/{provider}/confirm`` [``{"models": [...]}``]: held prices go in force."""
        models: Optional[list[str]] = None
        if request.can_read_body:
            body = await read_json_object(request, 64 * 1024)
            raw = body.get("models")
            if raw is not None and (not isinstance(raw, list) or not all(isinstance(m, str) for m in raw)):
                raise ArbstrError(400, "models must be a list of model names", param="models", code="invalid_value")
            models = raw
        provider = request.match_info["provider"]
        if not subjects.TOKEN_RE.match(provider):
            raise ArbstrError(404, f"no provider {provider!r} in the price table", code="provider_not_found")
        reply = await self.gw.bus.ask(exchanges.CONFIRM_PRICES, ConfirmRequest(provider=provider, models=models),
                                      request_id=request[REQUEST_ID], admin_token=bearer_token(request))
        return json_response(reply.model_dump(mode="json"))


def route_request(request: web.Request, body: dict[str, Any], spec: EndpointSpec, request_id: str) -> RouteRequest:
    """The router's view of a request, as the proxy builds it (override headers checked the same way)."""
    policy, complexity = route_overrides(request)
    s = spec.summarize(body)
    return RouteRequest(
        request_id=request_id, endpoint=spec.name, model=body["model"], last_user_text=s.last_user_text,
        text_sample=s.text_sample, input_tokens=s.input_tokens, turns=s.turns, max_tokens=s.max_tokens,
        choices=s.choices, stream=bool(body.get("stream")) and spec.streams, tools=s.tools,
        policy=policy, complexity=complexity,
    )


def ops_handlers(gw: "Gateway") -> dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """The handlers the route table (gateway/routes.py) names; it applies the admin and agent checks."""
    ops = Ops(gw)
    return {"providers": ops.providers, "cost": ops.cost, "health": ops.health,
            "admin.confirm_prices": ops.confirm_prices}
