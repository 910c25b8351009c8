"""The keyword points scorer (the router's first complexity scorer), kept for deployments that set
``[complexity] scorer = "keywords"``. Every feature adds whole points, so a score can be explained feature by
feature (``complexity_features``):

- length: the highest band of ``length_bands`` the prompt's input tokens reach;
- code: a fenced code block (```) anywhere in the text;
- paths: something that looks like a file path (``src/app/main.py``, ``C:\\repo\\x``);
- reasoning: one point per distinct reasoning word ("prove", "step by step", ...), capped;
- turns: the highest band of ``turn_bands`` the conversation's message count reaches;
- tools: the request offers tools.

The score reaching ``medium_at`` means "medium", reaching ``high_at`` means "high", else "low". On everyday
traffic it sends most short coding asks to the local tier (README, "Tiers"); the trained scorer replaces it.
"""

from __future__ import annotations

from typing import Optional

from schemas.common import Complexity
from schemas.config import ComplexityConfig
from schemas.router import RouteRequest

from .paths import has_file_path
from .text import contains_term

# The weights live in the config (``[complexity]``); this name stays for the code that reads them.
ComplexityWeights = ComplexityConfig

DEFAULT_WEIGHTS = ComplexityWeights(scorer="keywords")

_FENCE = "```"


def _band(value: int, bands: tuple[tuple[int, int], ...]) -> int:
    points = 0
    for threshold, band_points in bands:
        if value >= threshold:
            points = max(points, band_points)
    return points


def complexity_features(req: RouteRequest, weights: ComplexityWeights = DEFAULT_WEIGHTS) -> dict[str, int]:
    """Points per feature; their sum is the score."""
    text = req.text_sample or req.last_user_text
    lowered = text.lower()
    reasoning_hits = 0
    for word in weights.reasoning_words:
        if reasoning_hits * weights.reasoning_word >= weights.reasoning_cap:
            break  # the rest cannot change the score
        if contains_term(lowered, word):  # stored lowered by the config
            reasoning_hits += 1
    return {
        "length": _band(req.input_tokens, weights.length_bands),
        "code": weights.code_block if _FENCE in text else 0,
        "paths": weights.file_path if has_file_path(text) else 0,
        "reasoning": min(weights.reasoning_cap, weights.reasoning_word * reasoning_hits),
        "turns": _band(req.turns, weights.turn_bands),
        "tools": weights.tools if req.tools else 0,
    }


def classify(score: int, weights: ComplexityWeights = DEFAULT_WEIGHTS) -> Complexity:
    if score >= weights.high_at:
        return "high"
    if score >= weights.medium_at:
        return "medium"
    return "low"


def score_complexity(req: RouteRequest, weights: ComplexityWeights = DEFAULT_WEIGHTS) -> tuple[int, Complexity]:
    """(score, complexity) of ``req``; the client's ``X-Arbstr-Complexity`` override wins over the score."""
    score = sum(complexity_features(req, weights).values())
    override: Optional[Complexity] = req.complexity
    return score, override if override is not None else classify(score, weights)
