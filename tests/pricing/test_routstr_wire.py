"""arbstr's reading of the Routstr wire contract (``schemas.routstr``, ``actors.pricing.routstr``), pure: the 402
rule estimated from a node's listing never falls below what the node reserves, the cost a node reports, its
error envelope in all its shapes, and its billing fields kept from clients."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.pricing.routstr import parse_models
from schemas.routstr import (DRIFT_MIN_MSAT, drifted, is_payment_refusal, node_error, node_reserve_msat,
                             prompt_chars, reported_cost_msat, strip_billing, worst_reserve_msat)
from tests.support.routstr_rules import NodeModel, listing_entry, reserve_msat

MODELS = {
    "cheap": NodeModel(0.0005, 0.002, context_length=128_000, max_completion_tokens=16_384),
    "dear": NodeModel(0.015, 0.075, context_length=200_000, max_completion_tokens=32_000, cache_read=0.0015),
    "tiny": NodeModel(3e-7, 2.5e-6, context_length=8192, max_completion_tokens=None),
    "short": NodeModel(0.001, 0.004, context_length=4096, max_completion_tokens=8192),
}


def listed(min_request_msat: int = 1) -> dict[str, Any]:
    return {m.model: m for m in parse_models({"data": [listing_entry(name, nm, min_request_msat, 0)
                                                       for name, nm in MODELS.items()]})}


def test_the_listing_gives_the_nodes_terms_in_integers() -> None:
    got = listed(min_request_msat=2000)
    dear = got["dear"].node
    assert dear is not None
    assert (got["dear"].input_rate, got["dear"].output_rate) == (15_000, 75_000)  # sats per 1M tokens
    assert (dear.prompt_msat_per_mtok, dear.completion_msat_per_mtok) == (15_000_000, 75_000_000)
    assert dear.cache_read_msat_per_mtok == 1_500_000 and dear.min_request_msat == 2000
    assert dear.max_cost_msat == (200_000 - 32_000) * 15 + 32_000 * 75  # sats → msat
    assert (dear.context_length, dear.max_completion_tokens) == (200_000, 32_000)
    assert worst_reserve_msat(dear) == dear.max_cost_msat


@settings(max_examples=300, deadline=None)
@given(model=st.sampled_from(sorted(MODELS)), text=st.text(max_size=3000),
       max_tokens=st.one_of(st.none(), st.integers(0, 40_000)), min_request=st.sampled_from([1, 1000, 5000]))
def test_the_reserve_estimate_covers_what_the_node_reserves(model: str, text: str, max_tokens: Any,
                                                            min_request: int) -> None:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    price = listed(min_request)[model].node
    ours = node_reserve_msat(price, prompt_chars(body["messages"]), max_tokens)
    theirs = reserve_msat(MODELS[model], body, min_request)
    assert theirs <= ours + 2  # float rounding at the node: the gateway adds a whole sat on top
    # ... and not wildly above: the node's tolerance (1 %) of the maximum is all it may differ by.
    assert ours - theirs <= max(3, worst_reserve_msat(price) // 100 + 3)


def test_max_completion_tokens_does_not_lower_the_reserve_and_max_tokens_does() -> None:
    price = listed()["dear"].node
    messages = [{"role": "user", "content": "hello there"}]
    without = node_reserve_msat(price, prompt_chars(messages), None)
    capped = node_reserve_msat(price, prompt_chars(messages), 100)
    assert capped < without == 32_000 * 75 + 3 * 15  # the whole completion budget (2,400 sat) and the prompt
    assert capped == 3 * 15 + 100 * 75  # the prompt estimate (11 chars // 3) and max_tokens, in msat


def test_the_cost_a_node_reports() -> None:
    usage = {"prompt_tokens": 3, "cost": {"base_msats": 0, "input_msats": 10, "output_msats": 32,
                                         "total_msats": 42}, "cost_sats": 0, "remaining_balance_msats": 5}
    assert reported_cost_msat(usage) == 42
    assert reported_cost_msat({"cost": 0.00012}, {"X-Routstr-Cost-Msats": "77"}) == 77  # USD there: the header
    assert reported_cost_msat({"cost": 0.00012}) is None
    assert reported_cost_msat(None, {"X-Routstr-Cost-Msats": "nope"}) is None
    assert reported_cost_msat({"cost": {"total_msats": True}}) is None
    assert not drifted(1000, 1000 + DRIFT_MIN_MSAT) and drifted(1000, 1000 + DRIFT_MIN_MSAT + 1)
    assert not drifted(100_000, 104_000) and drifted(100_000, 94_000)


def test_billing_fields_are_kept_from_clients() -> None:
    body = {"id": "x", "usage": {"prompt_tokens": 1, "cost": {"total_msats": 5}, "cost_sats": 0,
                                 "remaining_balance_msats": 99}, "cost": {"total_msats": 5},
            "metadata": {"routstr": {"cost": {}}, "other": 1}}
    assert strip_billing(body) == {"id": "x", "usage": {"prompt_tokens": 1}, "metadata": {"other": 1}}
    assert strip_billing({"usage": {"cost": 0.1}}) == {"usage": {"cost": 0.1}}  # an upstream's USD cost stays


def test_every_shape_of_a_node_error() -> None:
    e = {"message": "Cashu token already spent", "type": "token_already_spent", "code": "cashu_token_already_spent"}
    got = node_error(400, {"detail": {"error": e}, "error": e, "request_id": "r"})
    assert (got.code, got.type, got.message) == (e["code"], e["type"], e["message"]) and is_payment_refusal(got)
    got = node_error(400, {"error": {"message": "Model 'x' not found", "type": "invalid_model", "code": 400},
                           "request_id": "r"})
    assert got.code == "400" and not is_payment_refusal(got)
    got = node_error(402, {"detail": {"reason": "Insufficient balance", "amount_required_msat": 5100,
                                      "type": "minimum_balance_required"}, "request_id": "r"})
    assert (got.code, got.required_msat) == ("minimum_balance_required", 5100) and is_payment_refusal(got)
    got = node_error(402, {"detail": {"error": {"message": "Insufficient balance: 4.5 sats (4500 msats) required "
                                                           "for this model; 1 sats (1000 msats) available.",
                                                "type": "insufficient_quota", "code": "insufficient_balance"}}})
    assert got.required_msat == 4500
    got = node_error(402, {"error": {"message": "Insufficient balance: 7000 mSats required. 10 available. "
                                                "(reserved: 0)", "code": "insufficient_balance"}})
    assert got.required_msat == 7000
    assert node_error(404, {"detail": "Not found check /docs for available endpoints"}).message.startswith("Not")
    assert node_error(422, {"detail": [{"type": "missing", "loc": ["body"]}]}).code == ""
    for junk in (None, [], "x", {"error": 5}, {"detail": 3}):
        assert node_error(500, junk).status == 500
