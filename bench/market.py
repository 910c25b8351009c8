"""A realistic market for the routing benchmarks, and loading the labelled corpus as the router sees it.

Prices in sats per 1M tokens at 100,000 USD/BTC (1 USD per 1M tokens = 1,000 sats): published list prices of a
local 8B model, two standard models (gpt-4o-mini class and a 70B open model) and two frontier models (gpt-4o and
Sonnet class); two providers per model, the second 20-40 % dearer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from gateway.endpoints import CHAT
from schemas.common import Tier
from schemas.money import cost_msat
from schemas.pricing import ProviderPrices
from schemas.router import RouteRequest

CORPUS = Path(__file__).parent / "corpus" / "corpus.jsonl"
TIER_NAMES: tuple[Tier, ...] = ("local", "standard", "frontier")


@dataclass(frozen=True)
class Offer:
    provider: str
    model: str
    tier: Tier
    input_rate: int  # sats per 1M tokens
    output_rate: int


MARKET: tuple[Offer, ...] = (
    Offer("local-a", "llama-3.1-8b", "local", 20, 50),
    Offer("local-b", "llama-3.1-8b", "local", 26, 65),          # +30 %
    Offer("std-a", "gpt-4o-mini", "standard", 150, 600),
    Offer("std-b", "gpt-4o-mini", "standard", 190, 750),        # +25 %
    Offer("std-c", "llama-3.3-70b", "standard", 230, 400),
    Offer("std-d", "llama-3.3-70b", "standard", 310, 540),      # +35 %
    Offer("top-a", "gpt-4o", "frontier", 2500, 10000),
    Offer("top-b", "gpt-4o", "frontier", 3000, 12000),          # +20 %
    Offer("top-c", "claude-sonnet", "frontier", 3000, 15000),
    Offer("top-d", "claude-sonnet", "frontier", 4200, 21000),   # +40 %
)


def price_table(offers: Iterable[Offer] = MARKET) -> list[ProviderPrices]:
    return [ProviderPrices(provider=o.provider, tier=o.tier, models=[o.model], input_rate=o.input_rate,
                           output_rate=o.output_rate, context_length=200_000, supports_tools=True) for o in offers]


@dataclass(frozen=True)
class Labelled:
    id: str
    family: str
    tier: Tier
    lang: str
    split: str
    route: RouteRequest
    output_tokens: int


def route_request(row_id: str, body: dict, complexity: Optional[str] = None) -> RouteRequest:
    """Exactly the route request the gateway sends for ``body``."""
    s = CHAT.summarize(body)
    return RouteRequest(request_id=row_id, model=body["model"], last_user_text=s.last_user_text,
                        text_sample=s.text_sample, input_tokens=s.input_tokens, turns=s.turns,
                        max_tokens=s.max_tokens, tools=s.tools, complexity=complexity)  # type: ignore[arg-type]


def load_labelled(path: Path = CORPUS, split: Optional[str] = None) -> list[Labelled]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if split is not None and row.get("split", "train") != split:
            continue
        # The old generated workload (bench/make_workload.py) names these "required_tier" and "kind".
        tier = row.get("tier") or row["required_tier"]
        out.append(Labelled(row["id"], row.get("family") or row.get("kind", "?"), tier, row.get("lang", "en"),
                            row.get("split", "train"), route_request(row["id"], row["body"]), row["output_tokens"]))
    return out


def bill(item: Labelled, offer: Offer) -> int:
    return cost_msat(item.route.input_tokens, item.output_tokens, offer.input_rate, offer.output_rate)


def cheapest_at(item: Labelled, tier: Tier, offers: Iterable[Offer] = MARKET) -> int:
    """What the item costs at the cheapest offer of exactly ``tier``."""
    return min(bill(item, o) for o in offers if o.tier == tier)
