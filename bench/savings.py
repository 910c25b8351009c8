"""What routing saves: the shipped workload replayed through the router's pure core over a marketplace price
table, against pinning every request to one provider.

    python -m bench.savings [--workload bench/workload.jsonl] [--pinned NAME] [--frontier NAME]

For every request the router (``actors.router.rank.route``, the code the router actor runs, with the default
``[complexity]`` config) picks the cheapest offer at or above the tier the request needs; the answer is billed
with ``schemas.money.cost_msat`` for the request's real token counts. Baselines bill the same tokens at one
pinned offer: (a) the cheapest single offer able to serve every request at the tier it needs (the best a client
can do by pinning one provider without degrading answers; the most conservative valid baseline), (b) a frontier
one — by default the median frontier offer (ranked by what the whole workload would cost there; the lower
middle when the count is even) — and (c) per tier: every request at the tier it needs, always from that tier's
median offer (the same quality as arbstr's answers; what remains is the marketplace spread). Savings against
every single offer are printed too, including the standard ones that answer the requests needing a frontier
model below their tier (``vs_pinned_median_standard`` is the median of those).

"Below tier" counts requests served by an offer below the tier they need, twice: against the tier the router
computed (must be 0) and against the tier the workload's author labelled each request with (how well the
complexity score reads the workload). Prints JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from actors.router.rank import route
from gateway.endpoints import CHAT
from schemas.common import TIER_ORDER, Tier
from schemas.config import Config
from schemas.money import cost_msat
from schemas.pricing import ProviderPrices
from schemas.router import RouteRequest

WORKLOAD = Path(__file__).with_name("workload.jsonl")
NOW_MS = 1_767_225_600_000
TARGET_VS_PINNED_PCT = 30
TARGET_VS_FRONTIER_PCT = 60


@dataclass(frozen=True)
class Offer:
    provider: str
    model: str
    tier: Tier
    input_rate: int  # sats per 1M tokens
    output_rate: int


# A marketplace of nodes reselling models, in sats per 1M tokens at 100,000 USD/BTC (1 sat = 0.001 USD, so
# 1 USD per 1M tokens = 1,000): published list prices of the models, and the same model at several nodes with
# different mark-ups. Tiers are what an operator would assign.
OFFERS: tuple[Offer, ...] = (
    Offer("home-gpu", "llama-3.1-8b", "local", 0, 0),               # the operator's own GPU: free
    Offer("node-a", "llama-3.1-8b", "local", 20, 50),
    Offer("node-b", "gpt-4o-mini", "standard", 150, 600),
    Offer("node-c", "llama-3.3-70b", "standard", 230, 400),
    Offer("node-d", "deepseek-v3", "standard", 270, 1100),
    Offer("node-e", "gpt-4.1-mini", "standard", 400, 1600),
    Offer("node-f", "llama-3.3-70b", "standard", 880, 880),
    Offer("node-g", "deepseek-r1", "frontier", 550, 2190),
    Offer("node-h", "gpt-4.1", "frontier", 2000, 8000),
    Offer("node-i", "gpt-4o", "frontier", 2500, 10000),
    Offer("node-j", "deepseek-r1", "frontier", 3000, 7000),
    Offer("node-k", "claude-sonnet-4", "frontier", 3000, 15000),
)


def price_table(offers: tuple[Offer, ...] = OFFERS) -> list[ProviderPrices]:
    return [ProviderPrices(provider=o.provider, tier=o.tier, models=[o.model], input_rate=o.input_rate,
                           output_rate=o.output_rate, context_length=200_000) for o in offers]


@dataclass(frozen=True)
class Request:
    id: str
    kind: str
    required_tier: Tier
    route: RouteRequest
    output_tokens: int


def load(path: Path) -> list[Request]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        s = CHAT.summarize(row["body"])  # exactly what the gateway sends the router
        rr = RouteRequest(request_id=row["id"], model=row["body"]["model"], last_user_text=s.last_user_text,
                          text_sample=s.text_sample, input_tokens=s.input_tokens, turns=s.turns,
                          max_tokens=s.max_tokens, tools=s.tools)
        out.append(Request(row["id"], row["kind"], row["required_tier"], rr, row["output_tokens"]))
    return out


def bill(req: Request, offer: Offer) -> int:
    return cost_msat(req.route.input_tokens, req.output_tokens, offer.input_rate, offer.output_rate)


def pct_saved(ours: int, theirs: int) -> float:
    return round(100 * (theirs - ours) / theirs, 1) if theirs else 0.0


def median_offer(offers: list[Offer], workload: list[Request]) -> Offer:
    ranked = sorted(offers, key=lambda o: (sum(bill(r, o) for r in workload), o.provider))
    return ranked[(len(ranked) - 1) // 2]


def run(workload: list[Request], pinned: Optional[str] = None, frontier: Optional[str] = None,
        offers: tuple[Offer, ...] = OFFERS) -> dict[str, Any]:
    config = Config()
    prices = price_table(offers)
    by_name = {o.provider: o for o in offers}
    total = 0
    by_kind: Counter[str] = Counter()
    served_tier: Counter[str] = Counter()
    served_by: Counter[str] = Counter()
    below_routed = below_labelled = above_labelled = 0
    confusion: Counter[str] = Counter()
    for req in workload:
        reply = route(req.route, prices, {}, config, NOW_MS)
        offer = by_name[reply.candidates[0].provider]
        cost = bill(req, offer)
        total += cost
        by_kind[req.kind] += cost
        served_tier[offer.tier] += 1
        served_by[offer.provider] += 1
        confusion[f"{req.required_tier}->{reply.tier}"] += 1
        if TIER_ORDER[offer.tier] < TIER_ORDER[reply.tier]:
            below_routed += 1
        if TIER_ORDER[offer.tier] < TIER_ORDER[req.required_tier]:
            below_labelled += 1
        elif TIER_ORDER[offer.tier] > TIER_ORDER[req.required_tier]:
            above_labelled += 1

    def pinned_to(offer: Offer) -> dict[str, Any]:
        cost = sum(bill(r, offer) for r in workload)
        below = sum(1 for r in workload if TIER_ORDER[offer.tier] < TIER_ORDER[r.required_tier])
        return {"provider": offer.provider, "model": offer.model, "tier": offer.tier,
                "rates": [offer.input_rate, offer.output_rate], "total_msat": cost,
                "arbstr_saves_pct": pct_saved(total, cost), "below_required_tier": below}

    standard = [o for o in offers if o.tier == "standard"]
    frontiers = [o for o in offers if o.tier == "frontier"]
    # (a) the cheapest single offer that can serve EVERY request at the tier it needs: the best a client can
    # do by pinning one provider without degrading answers — the most conservative valid baseline.
    able = [o for o in offers if all(TIER_ORDER[o.tier] >= TIER_ORDER[r.required_tier] for r in workload)]
    base_a = by_name[pinned] if pinned else min(able, key=lambda o: (sum(bill(r, o) for r in workload),
                                                                     o.provider))
    base_b = by_name[frontier] if frontier else median_offer(frontiers, workload)
    a, b = pinned_to(base_a), pinned_to(base_b)
    # A client that already picks the tier each request needs, but always buys it from the same offer (the
    # median of that tier): the same quality as arbstr's answers, so what is left is the marketplace spread.
    per_tier = {t: median_offer([o for o in offers if o.tier == t], workload) for t in ("local", "standard",
                                                                                        "frontier")}
    per_tier_cost = sum(bill(r, per_tier[r.required_tier]) for r in workload)
    kinds = Counter(r.kind for r in workload)
    return {
        "workload": {"requests": len(workload), "by_kind": dict(sorted(kinds.items())),
                     "input_tokens": sum(r.route.input_tokens for r in workload),
                     "output_tokens": sum(r.output_tokens for r in workload)},
        "arbstr": {"total_msat": total, "by_kind_msat": dict(sorted(by_kind.items())),
                   "served_by_tier": dict(sorted(served_tier.items())),
                   "served_by_provider": dict(sorted(served_by.items())),
                   "below_required_tier": below_routed, "below_labelled_tier": below_labelled,
                   "above_labelled_tier": above_labelled, "labelled_to_routed_tier": dict(sorted(confusion.items()))},
        "vs_pinned_single": a,
        "vs_pinned_median_standard": pinned_to(median_offer(standard, workload)),
        "vs_always_frontier": b,
        "vs_pinned_per_tier": {"providers": {t: o.provider for t, o in per_tier.items()},
                               "total_msat": per_tier_cost, "arbstr_saves_pct": pct_saved(total, per_tier_cost),
                               "below_required_tier": 0},
        "vs_every_offer": [pinned_to(o) for o in offers if o.tier != "local"],
        "targets": {"vs_pinned_pct": TARGET_VS_PINNED_PCT, "vs_frontier_pct": TARGET_VS_FRONTIER_PCT,
                    "met": a["arbstr_saves_pct"] >= TARGET_VS_PINNED_PCT
                    and b["arbstr_saves_pct"] >= TARGET_VS_FRONTIER_PCT and below_routed == 0
                    and below_labelled == 0},
    }


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", type=Path, default=WORKLOAD)
    ap.add_argument("--pinned", help="the standard provider of baseline (a); default: the median standard offer")
    ap.add_argument("--frontier", help="the frontier provider of baseline (b); default: the median frontier offer")
    args = ap.parse_args(argv)
    result = run(load(args.workload), args.pinned, args.frontier)
    result["workload"]["file"] = str(args.workload)
    result["workload"]["sha256"] = hashlib.sha256(args.workload.read_bytes()).hexdigest()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
