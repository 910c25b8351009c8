"""What routing costs and how often it serves a request below the tier it needs, on labelled requests the tier
model was not trained on, replayed through the router's pure core over a realistic market.

    python -m bench.savings [--split heldout|adversarial|train|all] [--corpus PATH]

``--split heldout`` (the default) reads the corpus's held-out families (``bench/corpus/build.py``: whole task
families the trainer never saw); ``adversarial`` reads ``bench/corpus/adversarial.jsonl`` (written after training);
``--corpus`` reads any file of the same format (the old generated ``bench/workload.jsonl`` too).

For every request the router (``actors.router.rank.route``, the code the router actor runs, default config) picks
the cheapest offer at or above the tier it decides; the answer is billed with ``schemas.money.cost_msat`` for the
request's token counts. Against the tier each request was labelled with (README, "Tiers"), it reports the
confusion matrix, the requests served below and above their tier, and the cost against:

- ``always_frontier``: every request at the median frontier offer (a client that always buys a frontier model);
- ``cheapest_valid_pinned``: the cheapest single offer that serves every request at or above its tier (the best a
  client can do by pinning one provider without degrading answers);
- ``oracle``: every request at the cheapest offer of exactly the tier it needs (perfect routing).
Prints JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

from actors.router.rank import route
from schemas.common import TIER_ORDER
from schemas.config import Config

from .market import CORPUS, MARKET, TIER_NAMES, Labelled, Offer, bill, cheapest_at, load_labelled, price_table

ADVERSARIAL = CORPUS.with_name("adversarial.jsonl")
NOW_MS = 1_767_225_600_000
# The bar on families the model never saw (issue "routing brain").
MAX_BELOW_PCT = 2.0
MAX_COST_VS_ORACLE = 1.10


def ratio(ours: int, theirs: int) -> float:
    return round(ours / theirs, 3) if theirs else 0.0


def median_offer(offers: Sequence[Offer], workload: Sequence[Labelled]) -> Offer:
    ranked = sorted(offers, key=lambda o: (sum(bill(r, o) for r in workload), o.provider))
    return ranked[(len(ranked) - 1) // 2]


def run(workload: Sequence[Labelled], offers: tuple[Offer, ...] = MARKET,
        config: Optional[Config] = None) -> dict[str, Any]:
    config = config or Config()
    prices = price_table(offers)
    by_name = {o.provider: o for o in offers}
    total = oracle = 0
    confusion: Counter[tuple[str, str]] = Counter()
    below: list[str] = []
    above = 0
    by_lang: dict[str, Counter[str]] = defaultdict(Counter)
    by_family_below: Counter[str] = Counter()
    served_by: Counter[str] = Counter()
    for req in workload:
        reply = route(req.route, prices, {}, config, NOW_MS)
        offer = by_name[reply.candidates[0].provider]
        total += bill(req, offer)
        oracle += cheapest_at(req, req.tier, offers)
        served_by[offer.provider] += 1
        confusion[(req.tier, offer.tier)] += 1
        gap = TIER_ORDER[offer.tier] - TIER_ORDER[req.tier]
        by_lang[req.lang]["requests"] += 1
        if gap < 0:
            below.append(req.id)
            by_family_below[req.family] += 1
            by_lang[req.lang]["below"] += 1
        elif gap > 0:
            above += 1

    def pinned(offer: Offer) -> dict[str, Any]:
        cost = sum(bill(r, offer) for r in workload)
        return {"provider": offer.provider, "model": offer.model, "tier": offer.tier, "total_msat": cost,
                "arbstr_cost_ratio": ratio(total, cost)}

    valid = [o for o in offers if all(TIER_ORDER[o.tier] >= TIER_ORDER[r.tier] for r in workload)]
    cheapest_valid = min(valid, key=lambda o: (sum(bill(r, o) for r in workload), o.provider))
    frontier = median_offer([o for o in offers if o.tier == "frontier"], workload)
    n = len(workload)
    below_pct = round(100 * len(below) / n, 2) if n else 0.0
    return {
        "workload": {"requests": n, "by_tier": dict(Counter(r.tier for r in workload)),
                     "families": len({r.family for r in workload}),
                     "non_english_pct": round(100 * sum(r.lang != "en" for r in workload) / n, 1) if n else 0.0,
                     "input_tokens": sum(r.route.input_tokens for r in workload),
                     "output_tokens": sum(r.output_tokens for r in workload)},
        "confusion": {need: {got: confusion[(need, got)] for got in TIER_NAMES} for need in TIER_NAMES},
        "below_tier": len(below), "below_tier_pct": below_pct, "above_tier": above,
        "below_by_family": dict(by_family_below.most_common()), "below_ids": below,
        "by_language": {lang: dict(c) for lang, c in sorted(by_lang.items())},
        "arbstr": {"total_msat": total, "served_by_provider": dict(sorted(served_by.items()))},
        "oracle": {"total_msat": oracle, "arbstr_cost_ratio": ratio(total, oracle)},
        "always_frontier": pinned(frontier),
        "cheapest_valid_pinned": pinned(cheapest_valid),
        "targets": {"max_below_pct": MAX_BELOW_PCT, "max_cost_vs_oracle": MAX_COST_VS_ORACLE,
                    "met": below_pct <= MAX_BELOW_PCT and ratio(total, oracle) <= MAX_COST_VS_ORACLE},
    }


def workload_for(split: str, corpus: Optional[Path]) -> tuple[Path, list[Labelled]]:
    if corpus is not None:
        return corpus, load_labelled(corpus)
    if split == "adversarial":
        return ADVERSARIAL, load_labelled(ADVERSARIAL)
    return CORPUS, load_labelled(CORPUS, None if split == "all" else split)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("heldout", "adversarial", "train", "all"), default="heldout")
    ap.add_argument("--corpus", type=Path, help="a labelled JSONL file instead of the corpus split")
    args = ap.parse_args(argv)
    path, workload = workload_for(args.split, args.corpus)
    result = run(workload)
    result["workload"].update(file=str(path), split=None if args.corpus else args.split,
                              sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
