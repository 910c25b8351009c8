"""The savings benchmark and the labelled corpus behind it: the shipped files are what their builders make, the
held-out split holds whole families the shipped model never saw, and routing those families meets the bar (at most
2 % below the tier they need, at most 1.10 x the oracle's cost)."""

from __future__ import annotations

import json
from collections import Counter

from actors.router.weights import default_model
from bench.corpus import adversarial
from bench.corpus.build import HELD_OUT, OUT as CORPUS_FILE, build
from bench.make_workload import DEFAULT_OUT, DEFAULT_SEED, generate
from bench.market import MARKET, bill, load_labelled
from bench.savings import ADVERSARIAL, MAX_BELOW_PCT, MAX_COST_VS_ORACLE, run
from schemas.money import cost_msat


def shipped(path: str) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_the_shipped_files_are_what_their_builders_make() -> None:
    assert shipped(str(CORPUS_FILE)) == build()
    assert shipped(str(ADVERSARIAL)) == adversarial.rows()
    assert shipped(str(DEFAULT_OUT)) == generate(500, DEFAULT_SEED)  # the old generated workload, still readable


def test_the_corpus_covers_the_tiers_families_and_languages() -> None:
    rows = shipped(str(CORPUS_FILE))
    assert len(rows) >= 2000
    assert {r["tier"] for r in rows} == {"local", "standard", "frontier"}
    assert len({r["family"] for r in rows}) >= 40
    assert sum(r["lang"] != "en" for r in rows) >= 0.25 * len(rows)
    for r in rows:
        users = [m for m in r["body"]["messages"] if m["role"] == "user"]
        assert users and users[-1]["content"], r["id"]
        assert r["output_tokens"] > 0
    # Whole families are held out, at every tier, and a family is never in both splits.
    split_of = {}
    for r in rows:
        assert split_of.setdefault(r["family"], r["split"]) == r["split"], r["family"]
    assert {f for f, s in split_of.items() if s == "heldout"} == HELD_OUT
    assert {r["tier"] for r in rows if r["split"] == "heldout"} == {"local", "standard", "frontier"}


def test_the_shipped_model_was_trained_without_the_held_out_families() -> None:
    info = default_model().info
    train = [r for r in shipped(str(CORPUS_FILE)) if r["split"] == "train"]
    assert info["trained_on"]["requests"] == len(train)
    assert info["trained_on"]["families"] == len({r["family"] for r in train})


def test_routing_the_held_out_families_meets_the_bar() -> None:
    workload = load_labelled(CORPUS_FILE, "heldout")
    result = run(workload)
    n = len(workload)
    assert sum(sum(row.values()) for row in result["confusion"].values()) == n
    assert result["below_tier"] == sum(result["confusion"][need][got] for need, got in
                                       (("standard", "local"), ("frontier", "local"), ("frontier", "standard")))
    assert result["below_tier_pct"] <= MAX_BELOW_PCT
    assert result["oracle"]["arbstr_cost_ratio"] <= MAX_COST_VS_ORACLE
    assert result["targets"]["met"]
    # Routing costs less than always buying a frontier model, or pinning the cheapest one that is never too weak.
    assert result["arbstr"]["total_msat"] < result["cheapest_valid_pinned"]["total_msat"]
    assert result["cheapest_valid_pinned"]["total_msat"] <= result["always_frontier"]["total_msat"]
    assert result["cheapest_valid_pinned"]["tier"] == "frontier"
    # The figures the trainer recorded in the model file are the ones the router reproduces.
    recorded = default_model().info["heldout"]
    assert (recorded["below"], recorded["above"]) == (result["below_tier"], result["above_tier"])
    assert Counter(r.lang for r in workload)["en"] < 0.75 * n


def test_routing_the_adversarial_set() -> None:
    result = run(load_labelled(ADVERSARIAL))
    assert result["below_tier_pct"] <= MAX_BELOW_PCT
    assert result["oracle"]["arbstr_cost_ratio"] <= MAX_COST_VS_ORACLE


def test_bill_is_the_shared_cost_formula() -> None:
    req = load_labelled(ADVERSARIAL)[0]
    offer = MARKET[2]
    assert bill(req, offer) == cost_msat(req.route.input_tokens, req.output_tokens, offer.input_rate,
                                         offer.output_rate)
