"""A cheap, explainable complexity score of one request, and the minimum provider tier it calls for.

Every feature adds whole points, so a score can be explained feature by feature (``complexity_features``):

- length: the highest band of ``length_bands`` the prompt's input tokens reach;
- code: a fenced code block (```) anywhere in the text;
- paths: something that looks like a file path (``src/app/main.py``, ``C:\\repo\\x``);
- reasoning: one point per distinct reasoning word ("prove", "step by step", ...), capped;
- turns: the highest band of ``turn_bands`` the conversation's message count reaches;
- tools: the request offers tools.

The score reaching ``medium_at`` means "medium", reaching ``high_at`` means "high", else "low". Weights and
thresholds come from the ``[complexity]`` config section (``schemas.config.ComplexityConfig``), whose defaults
are ``DEFAULT_WEIGHTS``.
"""

from __future__ import annotations

import re
from typing import Optional

from schemas.common import COMPLEXITY_TIER, Complexity, Tier
from schemas.config import ComplexityConfig
from schemas.router import RouteRequest

from .text import contains_term


# The weights live in the config (``[complexity]``); this name stays for the code that reads them.
ComplexityWeights = ComplexityConfig

DEFAULT_WEIGHTS = ComplexityWeights()

_FENCE = "```"
# A token is a path when it has a separator and a file extension (src/app/main.py) or two separators
# (/usr/bin/env); "and/or" and URLs are not paths.
_PATH_EDGE_PUNCT = "\"'`()[]{}<>,;:!?"
_EXT_RE = re.compile(r"\.[A-Za-z0-9]{1,8}$")


def looks_like_path(token: str) -> bool:
    token = token.strip(_PATH_EDGE_PUNCT).rstrip(".")
    if "://" in token:
        return False
    separators = token.count("/") + token.count("\\")
    if separators == 0 or len(token) < 3:
        return False
    last = max(token.rfind("/"), token.rfind("\\"))
    return separators >= 2 or bool(_EXT_RE.search(token[last + 1:]))


def _token_around(text: str, i: int) -> tuple[str, int]:
    """The whitespace-delimited token holding ``text[i]``, and the index just past it."""
    start = i
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    end = i + 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[start:end], end


def has_file_path(text: str, max_tokens: int = 64) -> bool:
    """Looks at the tokens around separators only (at most ``max_tokens`` of them, to bound the cost)."""
    i = 0
    for _ in range(max_tokens):
        slash, backslash = text.find("/", i), text.find("\\", i)
        hits = [h for h in (slash, backslash) if h >= 0]
        if not hits:
            return False
        token, i = _token_around(text, min(hits))
        if looks_like_path(token):
            return True
    return False


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


def minimum_tier(complexity: Complexity) -> Tier:
    return COMPLEXITY_TIER[complexity]
