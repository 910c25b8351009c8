"""The trained tier scorer: two logistic models over ``features.extract`` — "needs at least standard" and "needs
frontier" — and an asymmetric decision between them.

A wrong answer from a model too weak for the task is the expensive error; a stronger model than needed only
costs money. So a tier is chosen as soon as the probability that the request needs it reaches
``0.5 - margin`` (``[complexity] margin``): when unsure between two tiers, the higher one. Pure: the weights
come in as a ``TierModel`` (``weights.default_model()`` reads the shipped file once).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

from schemas.common import Tier
from schemas.router import RouteRequest

from .features import cjk_pairs, parts

TIERS: tuple[Tier, ...] = ("local", "standard", "frontier")
_WORD_PREFIXES = ("w:", "p:", "c:")


Weight = tuple[float, float]


@dataclass(frozen=True)
class TierModel:
    """Weights per feature name: (towards standard-or-above, towards frontier). Word weights are also indexed by
    the bare token, prefix or CJK pair, so scoring looks words up without building their feature names."""

    weights: dict[str, Weight]
    info: dict[str, Any]
    named: dict[str, Weight]
    words: dict[str, Weight]
    prefixes: dict[str, Weight]
    pairs: dict[str, Weight]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "TierModel":
        if doc.get("format") != "arbstr-tier-model/1":
            raise ValueError(f"not a tier model file (format {doc.get('format')!r})")
        weights = {name: (float(w[0]), float(w[1])) for name, w in doc["weights"].items()}
        by_kind: dict[str, dict[str, Weight]] = {k: {} for k in _WORD_PREFIXES}
        named = {}
        for name, w in weights.items():
            if name[:2] in by_kind:
                by_kind[name[:2]][name[2:]] = w
            else:
                named[name] = w
        return cls(weights, dict(doc.get("info", {})), named, by_kind["w:"], by_kind["p:"], by_kind["c:"])

    @property
    def default_margin(self) -> float:
        return float(self.info.get("default_margin", 0.25))

    @property
    def default_frontier_margin(self) -> float:
        return float(self.info.get("default_frontier_margin", self.default_margin))


@dataclass(frozen=True)
class Contribution:
    name: str
    weight: float  # its push towards the decided boundary, in log-odds (negative: towards the lower tier)


@dataclass(frozen=True)
class Prediction:
    tier: Tier
    confidence: float  # probability of the chosen tier under the model
    probabilities: dict[str, float]  # per tier
    top: tuple[Contribution, ...]  # the features that pushed the decisive boundary most


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def tier_for(p_standard: float, p_frontier: float, margin: float, frontier_margin: float) -> Tier:
    """The asymmetric decision: the highest tier whose probability of being needed reaches 0.5 - its margin."""
    if p_frontier >= 0.5 - frontier_margin:
        return "frontier"
    if p_standard >= 0.5 - margin:
        return "standard"
    return "local"


def predict(model: TierModel, req: RouteRequest, margin: float, frontier_margin: float | None = None,
            top_n: int = 5) -> Prediction:
    """The minimum tier ``req`` needs. ``margin`` lowers both thresholds below 0.5 (choose the higher tier when
    unsure); ``frontier_margin``, when set, replaces it for the standard/frontier boundary."""
    p = parts(req)
    named = model.named
    s_std = s_top = 0.0
    used: list[tuple[str, float, float]] = []
    for name, value in p.named.items():
        w = named.get(name)
        if w is not None:
            a, b = w[0] * value, w[1] * value
            s_std += a
            s_top += b
            used.append((name, a, b))
    # Set intersections run in C: only the words the model knows are looked at one by one.
    words, prefixes = model.words, model.prefixes
    for tok in p.tokens & words.keys():
        if not tok.isdigit():
            w = words[tok]
            s_std += w[0]
            s_top += w[1]
            used.append(("w:" + tok, w[0], w[1]))
    for pre in {t[:5] for t in p.tokens if len(t) >= 6 and not t[0].isdigit()} & prefixes.keys():
        w = prefixes[pre]
        s_std += w[0]
        s_top += w[1]
        used.append(("p:" + pre, w[0], w[1]))
    if p.cjk_runs:
        for pair in set(cjk_pairs(p.cjk_runs)):
            w = model.pairs.get(pair)
            if w is not None:
                s_std += w[0]
                s_top += w[1]
                used.append(("c:" + pair, w[0], w[1]))
    p_std = _sigmoid(s_std)
    p_top = min(_sigmoid(s_top), p_std)  # needing frontier implies needing standard
    probs = {"local": 1.0 - p_std, "standard": p_std - p_top, "frontier": p_top}
    tier = tier_for(p_std, p_top, margin, margin if frontier_margin is None else frontier_margin)
    # Explain the boundary that decided: frontier-or-not for frontier, standard-or-not otherwise.
    col = 2 if tier == "frontier" else 1
    ranked = heapq.nlargest(top_n + 1, used, key=lambda u, c=col: abs(u[c]))  # +1: the bias may be among them
    top = tuple(Contribution(u[0], round(u[col], 3)) for u in ranked if u[0] != "bias")[:top_n]
    return Prediction(tier, round(probs[tier], 4), {t: round(p, 4) for t, p in probs.items()}, top)
