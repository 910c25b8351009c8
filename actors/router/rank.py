"""Candidate filtering and ranking: which providers may serve this request, cheapest first.

Pure: prices, breaker states, config and ``now_ms`` come in; a ``RouteReply`` or an ``ArbstrError`` comes out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

from schemas.breaker import BreakerState
from schemas.common import TIER_ORDER, Tier
from schemas.config import Config, PolicyConfig
from schemas.errors import ArbstrError
from schemas.money import ceil_div, cost_msat
from schemas.pricing import ModelRate, ProviderPrices
from schemas.router import Candidate, Envelope, RouteReply, RouteRequest

from .complexity import TierDecision, decide, skipped
from .policy import choose_policy
from .scorer import TierModel

log = logging.getLogger("arbstr.router")

AUTO_MODEL = "auto"


@dataclass(frozen=True)
class Option:
    """One (provider, upstream model) pair that might serve the request."""

    prices: ProviderPrices
    model: str
    rates: ModelRate

    @property
    def provider(self) -> str:
        return self.prices.provider

    @property
    def tier(self) -> Tier:
        return self.prices.tier


def apply_min_tier(options: list[Option], min_tier: Tier, explicit: bool) -> tuple[list[Option], bool]:
    """The options at or above ``min_tier``, and whether the tier had to be ignored.

    Only options *below* the tier are dropped. A computed tier that no option meets is ignored rather than
    failing the request (tiers are coarse and deployments may be small); a tier the client asked for
    (``X-Arbstr-Complexity``) is never ignored. ``route`` applies this to every option able to serve the request
    *before* breakers are looked at, so a provider at the tier that is merely down is waited for (503 with
    retry-after), never replaced by one below the tier.
    """
    floor = TIER_ORDER[min_tier]
    kept = [o for o in options if TIER_ORDER[o.tier] >= floor]
    if kept or explicit or not options:
        return kept, False
    return options, True


def breaker_blocks(state: Optional[BreakerState], now_ms: int) -> bool:
    """An open breaker excludes its provider until ``retry_at_ms``; half-open lets the probe through."""
    return state is not None and state.state == "open" and state.retry_at_ms > now_ms


def needs_probe(state: Optional[BreakerState], now_ms: int) -> bool:
    """Half-open, or open with its cool-down over (the breaker's tick may not have written it yet): only the
    one request that wins the probe slot may try this provider."""
    if state is None:
        return False
    return state.state == "half_open" or (state.state == "open" and state.retry_at_ms <= now_ms)


def static_exclusion(option: Option, req: RouteRequest, policy: Optional[PolicyConfig]) -> Optional[str]:
    """Why ``option`` can never serve this request (None: it can). Breakers and tiers are judged apart."""
    if not option.prices.routable:  # the actor keeps these out of ``prices``; a caller that did not is safe too
        return "not routable (" + ("; ".join(option.prices.reasons) or "no reason given") + ")"
    if policy is not None:
        if policy.allowed_models and option.model not in policy.allowed_models:
            return f"model {option.model} not allowed by policy {policy.name}"
        if policy.max_input_rate is not None and option.rates.input_rate > policy.max_input_rate:
            return f"input rate {option.rates.input_rate} above the policy cap {policy.max_input_rate}"
        if policy.max_output_rate is not None and option.rates.output_rate > policy.max_output_rate:
            return f"output rate {option.rates.output_rate} above the policy cap {policy.max_output_rate}"
    if req.tools and not option.prices.supports_tools:
        return "does not support tools"
    if req.stream and option.prices.payment == "x_cashu":
        # Paid per request, the node answers only once the whole completion is in: no stream to relay.
        return "paid per request (X-Cashu): streamed requests are not sent there"
    return None


def context_exclusion(option: Option, req: RouteRequest) -> Optional[str]:
    """Why ``option``'s context cannot hold this request (input plus the output cap), or None."""
    needed = req.input_tokens + (req.max_tokens or 0)
    if needed > option.prices.context_length:
        return f"context {option.prices.context_length} < {needed} tokens"
    return None


# Where each endpoint carries the prompt and the output cap, for the ``param`` of a context error.
_PROMPT_PARAM = {"chat": "messages", "completions": "prompt", "embeddings": "input", "responses": "input"}
_CAP_PARAM = {"chat": "max_tokens", "completions": "max_tokens", "responses": "max_output_tokens"}


def context_exceeded(req: RouteRequest, too_small: Sequence[Option]) -> ArbstrError:
    """400, not 503: waiting cannot help a request that no provider able to serve it has the context for. Names the
    largest context on offer, and the field to shrink (the output cap when the prompt alone would fit)."""
    largest = max(o.prices.context_length for o in too_small)
    cap = req.max_tokens or 0
    param = _PROMPT_PARAM.get(req.endpoint, "messages")
    if req.input_tokens <= largest and cap:
        param = _CAP_PARAM.get(req.endpoint, "max_tokens")
    parts = f"{req.input_tokens} of input and up to {cap} of output" if cap else f"{req.input_tokens} of input"
    return ArbstrError(400, f"this request needs {req.input_tokens + cap} tokens ({parts}), but the largest context "
                            f"of a provider that could serve model {req.model!r} is {largest} tokens",
                       param=param, code="context_length_exceeded", headers={"x-should-retry": "false"})


def unroutable_reasons(model: str, unroutable: Sequence[ProviderPrices]) -> list[str]:
    """Why the providers listing ``model`` that the router may not choose are out (for the 503 message)."""
    return [f"{p.provider}: not routable ({'; '.join(p.reasons) or 'no reason given'})"
            for p in unroutable if model == AUTO_MODEL or model in p.models]


def serving_options(req: RouteRequest, prices: list[ProviderPrices], policy: Optional[PolicyConfig],
                    unroutable: Sequence[ProviderPrices] = ()) -> list[Option]:
    """Every (provider, model) pair that serves the requested model; for ``auto``, every served model.

    ``prices`` holds routable entries only. A model that only unroutable ones list is a 503 that says why
    (e.g. "no credential"), not a 404: it exists, arbstr just cannot use it now."""
    if req.model == AUTO_MODEL:
        return [Option(p, m, p.rates_for(m)) for p in prices for m in dict.fromkeys(p.models)]
    options = [Option(p, req.model, p.rates_for(req.model)) for p in prices if req.model in p.models]
    if not options:
        reasons = unroutable_reasons(req.model, unroutable)
        if reasons:
            raise ArbstrError(503, f"no provider available for model {req.model!r}: " + "; ".join(reasons[:8]),
                              code="no_provider_available", headers={"x-should-retry": "false"})
        raise ArbstrError(404, f"the model {req.model!r} does not exist or no provider serves it",
                          code="model_not_found", param="model")
    if policy is not None and policy.allowed_models and req.model not in policy.allowed_models:
        raise ArbstrError(400, f"model {req.model!r} is not allowed by policy {policy.name!r}",
                          code="model_not_allowed", param="model")
    return options


def _no_provider(req: RouteRequest, reasons: list[str], retry_at_ms: Optional[int], now_ms: int) -> ArbstrError:
    detail = "; ".join(reasons[:8]) or "no provider"
    if retry_at_ms is not None:
        headers = {"retry-after": str(max(1, ceil_div(retry_at_ms - now_ms, 1000)))}
    else:  # every exclusion is permanent (context, tools, price caps): the SDK's retries could not help
        headers = {"x-should-retry": "false"}
    return ArbstrError(503, f"no provider available for model {req.model!r}: {detail}",
                       code="no_provider_available", headers=headers)


def _quiet(state: Optional[BreakerState]) -> bool:
    return state is None or (state.state == "closed" and state.consecutive_failures == 0)


def decide_for(req: RouteRequest, able: list[Option], config: Config, model: Optional[TierModel] = None) -> TierDecision:
    """The tier decision, or none when it cannot matter or there is nothing to judge: a named model (not ``auto``)
    whose able providers all sit in one tier gets those providers whatever the score says, so scoring it would only
    cost time; an embeddings input or a request without text holds no ask."""
    if req.model != AUTO_MODEL and len({o.tier for o in able}) <= 1:
        return skipped(req)
    if req.endpoint == "embeddings" or not (req.last_user_text or req.text_sample):
        return skipped(req)
    return decide(req, config.complexity, model)


def route(req: RouteRequest, prices: list[ProviderPrices], breakers: dict[str, BreakerState], config: Config,
          now_ms: int, unroutable: Sequence[ProviderPrices] = (), model: Optional[TierModel] = None) -> RouteReply:
    """``prices`` are the entries the router may choose; ``unroutable`` only explain a failure; ``model``: the tier
    model (default: the one the config names)."""
    asked_model = req.model
    virtual = next((p for p in config.policies if p.virtual_model and p.virtual_model == req.model), None)
    if virtual is not None:
        if req.policy is not None and req.policy != virtual.name:
            raise ArbstrError(400, f"model {req.model!r} belongs to policy {virtual.name!r}, but the header names "
                                   f"{req.policy!r}", code="policy_conflict", param="X-Arbstr-Policy")
        policy: Optional[PolicyConfig] = virtual
        req = req.model_copy(update={"model": AUTO_MODEL})  # pick model and provider together, as for "auto"
    else:
        policy = choose_policy(req.policy, req.last_user_text, config.policies)
    reasons: list[str] = []
    able: list[Option] = []
    too_small: list[Option] = []  # would serve it, but for the size of this request
    for option in serving_options(req, prices, policy, unroutable):
        why = static_exclusion(option, req, policy)
        if why is None:
            why = context_exclusion(option, req)
            if why is not None:
                too_small.append(option)
        if why is not None:
            reasons.append(f"{option.provider}/{option.model}: {why}")
            continue
        able.append(option)
    if not able and too_small:
        raise context_exceeded(req, too_small)

    decision = decide_for(req, able, config, model)
    tier = decision.tier
    explicit = req.complexity is not None

    at_tier, ignored_tier = apply_min_tier(able, tier, explicit)
    if ignored_tier:
        log.debug("request %s: no provider at tier %s or above; tier ignored", req.request_id, tier)
    elif explicit and able and not at_tier:
        reasons.append(f"no provider at tier {tier} or above")
    chosen: list[Option] = []
    for option in at_tier:
        if breaker_blocks(breakers.get(option.provider), now_ms):
            reasons.append(f"{option.provider}: circuit open")
            continue
        chosen.append(option)
    if not chosen:
        reasons += unroutable_reasons(req.model, unroutable)
        # Waiting helps only if some option is kept out by nothing but an open breaker.
        retry_at = min((breakers[o.provider].retry_at_ms for o in at_tier), default=None)
        raise _no_provider(req, reasons, retry_at, now_ms)

    output_tokens = (req.max_tokens or config.router.default_output_tokens) * req.choices  # n outputs, n paid
    candidates = [
        Candidate(
            provider=o.provider,
            model=o.model,
            input_rate=o.rates.input_rate,
            output_rate=o.rates.output_rate,
            base_fee_msat=o.prices.base_fee_msat,
            tier=o.tier,
            estimated_cost_msat=cost_msat(req.input_tokens, output_tokens, o.rates.input_rate, o.rates.output_rate,
                                          o.prices.base_fee_msat),
            probe=needs_probe(breakers.get(o.provider), now_ms),
            quiet=_quiet(breakers.get(o.provider)),
        )
        for o in chosen
    ]
    candidates.sort(key=lambda c: (c.estimated_cost_msat, c.provider, c.model))
    first = candidates[0]  # the hold covers the candidate about to be called; a fallback extends it first
    envelope = Envelope(
        input_tokens=req.input_tokens,
        output_tokens=req.max_tokens,
        input_rate=first.input_rate,
        output_rate=first.output_rate,
        base_fee_msat=first.base_fee_msat,
        max_output_tokens=config.router.max_output_tokens,
        choices=req.choices,
    )
    return RouteReply(
        request_id=req.request_id,
        model=asked_model,
        policy=policy.name if policy is not None else None,
        tier=tier,
        complexity=decision.complexity,
        complexity_score=decision.score,
        explanation=decision.explanation,
        candidates=candidates,
        envelope=envelope,
    )
