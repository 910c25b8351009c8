"""The minimum tier a request needs, and why: the trained tier scorer by default (``scorer.py``), the keyword
points scorer when the config asks for it (``keywords.py``), the client's ``X-Arbstr-Complexity`` over both.

Pure: the request, the ``[complexity]`` config and the model come in, a ``TierDecision`` comes out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from schemas.common import COMPLEXITY_TIER, TIER_COMPLEXITY, Complexity, Tier
from schemas.config import ComplexityConfig
from schemas.router import FeatureWeight, RouteRequest, TierExplanation

from .keywords import (DEFAULT_WEIGHTS, ComplexityWeights, classify, complexity_features,  # noqa: F401 (re-exported)
                       score_complexity)
from .paths import has_file_path, looks_like_path  # noqa: F401 (re-exported)
from .scorer import TierModel, predict
from .weights import model_for


@dataclass(frozen=True)
class TierDecision:
    tier: Tier
    complexity: Complexity
    score: int
    explanation: TierExplanation


def minimum_tier(complexity: Complexity) -> Tier:
    return COMPLEXITY_TIER[complexity]


def _keywords(req: RouteRequest, config: ComplexityConfig) -> TierDecision:
    points = complexity_features(req, config)
    score, complexity = score_complexity(req, config)
    predicted = minimum_tier(classify(score, config))
    top = sorted(((n, p) for n, p in points.items() if p), key=lambda np: -np[1])[:config.top_features]
    explanation = TierExplanation(scorer="keywords", predicted_tier=predicted,
                                  top_features=[FeatureWeight(name=n, weight=float(p)) for n, p in top],
                                  overridden=req.complexity is not None)
    return TierDecision(minimum_tier(complexity), complexity, score, explanation)


def _trained(req: RouteRequest, config: ComplexityConfig, model: TierModel) -> TierDecision:
    margin = config.margin if config.margin is not None else model.default_margin
    f_margin = config.frontier_margin if config.frontier_margin is not None else model.default_frontier_margin
    p = predict(model, req, margin, f_margin, config.top_features)
    tier = minimum_tier(req.complexity) if req.complexity is not None else p.tier
    # 0 = surely local, 100 = surely frontier: one number for dashboards that sort by need.
    score = round(50 * (1.0 - p.probabilities["local"] + p.probabilities["frontier"]))
    explanation = TierExplanation(scorer="trained", predicted_tier=p.tier, confidence=p.confidence,
                                  probabilities=p.probabilities,
                                  top_features=[FeatureWeight(name=c.name, weight=c.weight) for c in p.top],
                                  overridden=req.complexity is not None)
    return TierDecision(tier, TIER_COMPLEXITY[tier], score, explanation)


def decide(req: RouteRequest, config: ComplexityConfig, model: Optional[TierModel] = None) -> TierDecision:
    """The minimum tier of ``req``: the client's override if it sent one, else the configured scorer's."""
    if config.scorer == "keywords":
        return _keywords(req, config)
    return _trained(req, config, model if model is not None else model_for(config.model_file))


def skipped(req: RouteRequest) -> TierDecision:
    """No scoring (a named model one tier serves, so the score could not change the candidates; or no ask to
    judge). No floor is imposed (the lowest tier), unless the client's override sets one."""
    tier: Tier = minimum_tier(req.complexity) if req.complexity is not None else "local"
    return TierDecision(tier, TIER_COMPLEXITY[tier], 0,
                        TierExplanation(scorer="skipped", overridden=req.complexity is not None))
