"""The savings benchmark: the shipped workload is what the generator makes, and routing it never serves a request
below the tier it needs."""

from __future__ import annotations

import json

from bench.make_workload import DEFAULT_OUT, DEFAULT_SEED, generate
from bench.savings import OFFERS, WORKLOAD, bill, load, run
from schemas.money import cost_msat


def test_the_shipped_workload_is_reproducible() -> None:
    shipped = [json.loads(line) for line in DEFAULT_OUT.read_text(encoding="utf-8").splitlines()]
    assert shipped == generate(500, DEFAULT_SEED)
    kinds = {row["kind"] for row in shipped}
    assert kinds == {"chat", "code", "reasoning"}


def test_routing_the_workload() -> None:
    workload = load(WORKLOAD)
    result = run(workload)
    arbstr = result["arbstr"]
    assert arbstr["below_required_tier"] == 0
    assert arbstr["below_labelled_tier"] == 0
    assert sum(arbstr["by_kind_msat"].values()) == arbstr["total_msat"]
    assert sum(arbstr["served_by_tier"].values()) == len(workload) == 500
    # Routing is never dearer than answering everything at the cheapest offer that meets every request.
    frontier_totals = [sum(bill(r, o) for r in workload) for o in OFFERS if o.tier == "frontier"]
    assert arbstr["total_msat"] < min(frontier_totals)
    assert result["vs_always_frontier"]["arbstr_saves_pct"] >= 60
    assert result["vs_pinned_per_tier"]["arbstr_saves_pct"] > 0
    # A pinned standard offer answers the frontier requests below their tier; baseline (a) never does.
    assert result["vs_pinned_median_standard"]["below_required_tier"] == result["workload"]["by_kind"]["reasoning"]
    assert result["vs_pinned_single"]["below_required_tier"] == 0


def test_bill_is_the_shared_cost_formula() -> None:
    req = load(WORKLOAD)[0]
    offer = OFFERS[3]
    assert bill(req, offer) == cost_msat(req.route.input_tokens, req.output_tokens, offer.input_rate,
                                         offer.output_rate)
