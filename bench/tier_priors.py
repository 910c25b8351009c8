"""Prior weights of the named features, read off the product's tier definitions (README, "Tiers") before any
training; the trainer starts from them and pulls each weight back towards its prior (L2), so the corpus adjusts
the definitions rather than replacing them.

Why: a word group used by one task family cannot be learned from the other families, yet the definitions say what
it means ("prove" is frontier work whoever asks). With priors, a request from a family the corpus never had still
lands where the definitions put it. Values are log-odds pushes: (towards standard-or-above, towards frontier).
"""

from __future__ import annotations

PRIORS: dict[str, tuple[float, float]] = {
    "bias": (-1.0, -3.5),
    # "any task on code (write, fix, explain, refactor, review; SQL, regex, shell, config)" is standard
    "lex:plang": (2.5, 0.0),
    "lex:library": (1.5, 0.0),
    "lex:code_word": (1.5, 0.0),
    "lex:sql": (2.0, 0.0),
    "lex:regex": (2.5, 0.0),
    "lex:shell": (1.2, 0.0),
    "lex:error": (1.0, 0.0),
    "lex:fix": (0.8, 0.0),
    "lex:refactor": (1.2, 0.0),
    "lex:test": (1.0, 0.0),
    "lex:review": (0.8, 0.0),
    "code:fence": (2.5, 0.0),
    "code:inline": (1.0, 0.0),
    "code:indent": (1.0, 0.0),
    "regexy": (2.0, 0.0),
    "shelly": (1.5, 0.0),
    "x:code": (1.5, 0.0),
    "x:code&short": (0.5, 0.0),
    "tools": (2.0, 0.0),
    # "structured extraction, summaries and analysis of a few pages, math word problems, multi-step instructions"
    "lex:extract": (1.5, 0.0),
    "lex:plan": (1.5, 0.0),
    "lex:math": (1.0, 0.0),
    "math:ops": (1.0, 0.0),
    "x:summary&long": (2.0, 0.0),
    "lex:evaluate": (0.8, 0.4),
    "commas:3": (0.5, 0.0),
    "list_items": (0.3, 0.0),
    # "long multi-turn work with code and reasoning, system design and trade-off analysis over large context,
    # proofs and derivations, research-grade or high-stakes reasoning" is frontier
    "lex:prove": (2.0, 2.5),
    "lex:derive": (2.0, 2.5),
    "lex:design": (1.0, 1.0),
    "lex:tradeoff": (1.0, 1.0),
    "lex:scale": (0.8, 0.8),
    "lex:rigor": (1.0, 1.0),
    "lex:research": (0.8, 0.8),
    "lex:stakes": (1.0, 1.0),
    "lex:depth": (0.5, 0.5),
    "lex:security": (1.0, 0.5),
    "x:hard_ask": (0.5, 1.0),
    "x:hard&long": (0.5, 2.0),
    "x:eval&long": (0.3, 1.2),
    "x:stakes&detail": (0.5, 1.5),
    "x:tools&history": (0.5, 1.0),
    "instr:4": (0.3, 0.3),
    "clauses:3": (0.3, 0.3),
    "x:hard&turns": (0.5, 1.0),
    "x:ctx&turns": (0.5, 1.0),
    "x:codehist&turns": (0.3, 0.5),
    "len:5": (1.0, 0.5),
    # "greetings and small talk, simple facts, unit/number conversions, one-sentence rewrites, translations and
    # formatting, classification of a short text" is local
    "lex:greet": (-1.0, -0.5),
    "lex:fact": (-0.8, -0.3),
    "lex:convert": (-1.0, -0.5),
    "lex:translate": (-1.5, -0.5),
    "lex:rewrite": (-1.0, -0.5),
    "lex:classify": (-1.0, -0.5),
    "lex:format": (-0.5, -0.3),
    "x:long&easyask": (-1.5, -1.0),
}
