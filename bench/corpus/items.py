"""What one corpus entry is, and the helpers the family modules share to build them."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

Msg = dict[str, Any]

# About a third of each family is written in another language than English (where the family has asks in
# other languages); the acceptance workload is ~30 % non-English.
ENGLISH_SHARE = 0.66


@dataclass
class Item:
    family: str
    tier: str
    lang: str
    messages: list[Msg]
    output_tokens: int
    tools: Optional[list[dict[str, Any]]] = None
    notes: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        b: dict[str, Any] = {"model": "auto", "messages": self.messages}
        if self.tools:
            b["tools"] = self.tools
        return b


@dataclass(frozen=True)
class Family:
    name: str
    tier: str
    make: Callable[[random.Random], list[Item]]
    about: str


FAMILIES: list[Family] = []


def family(name: str, tier: str, about: str) -> Callable[[Callable[[random.Random], list[Item]]],
                                                        Callable[[random.Random], list[Item]]]:
    """Registers a family generator; ``about`` says what the family holds (it goes into the README table)."""
    def wrap(fn: Callable[[random.Random], list[Item]]) -> Callable[[random.Random], list[Item]]:
        FAMILIES.append(Family(name, tier, fn, about))
        return fn
    return wrap


def user(text: str) -> list[Msg]:
    return [{"role": "user", "content": text}]


def convo(*turns: str, system: Optional[str] = None) -> list[Msg]:
    """Alternating user/assistant messages starting with the user; the last one is the user's ask."""
    msgs: list[Msg] = [{"role": "system", "content": system}] if system else []
    for i, t in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    return msgs


def pick_lang(rng: random.Random, langs: Sequence[str]) -> str:
    others = [lang for lang in langs if lang != "en"]
    if "en" in langs and (not others or rng.random() < ENGLISH_SHARE):
        return "en"
    return rng.choice(others) if others else langs[0]


def asks_by_lang(rng: random.Random, asks: dict[str, Sequence[str]], n: int) -> list[tuple[str, str]]:
    """``n`` (lang, ask) pairs: languages in the corpus share, and within a language every ask used once before
    any is used twice (so small lists still give variety)."""
    decks: dict[str, list[str]] = {}
    out = []
    for _ in range(n):
        lang = pick_lang(rng, list(asks))
        deck = decks.get(lang)
        if not deck:
            deck = list(asks[lang])
            rng.shuffle(deck)
            decks[lang] = deck
        out.append((lang, deck.pop()))
    return out


def out_tokens(rng: random.Random, tier: str) -> int:
    """How long the answer turned out (every strategy is billed for the same tokens)."""
    lo, hi = {"local": (15, 260), "standard": (120, 900), "frontier": (500, 2800)}[tier]
    return rng.randint(lo, hi)


def casing(rng: random.Random, text: str) -> str:
    """Real users type in lowercase and without the final full stop about a fifth of the time."""
    if rng.random() < 0.2 and text[:1].isupper():
        text = text[0].lower() + text[1:]
    if rng.random() < 0.15 and text.endswith("."):
        text = text[:-1]
    return text
