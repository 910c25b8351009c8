"""Top-up decisions as pure functions: deliver what was paid before paying again, never pay blind, size by the
node's 402 rule, read what a node's answer to a delivered token means."""

from __future__ import annotations

from actors.vault.topup_plan import (FEE_MARGIN_MSAT, Step, credited_msat, delivery_verdict, next_step,
                                     reserve_need_msat, sizing)
from schemas.routstr import NodeModelPrice, node_error
from schemas.vault import ProviderKey

P = "node-a"
T = "tok:operator:topup-node-a-"
AMOUNT = 100_000


def key(*delivered: str, api_key: str = "sk-1") -> ProviderKey:
    return ProviderKey(provider=P, url="http://n/v1", api_key=api_key, delivered=list(delivered))


def test_first_top_up_pays_number_one() -> None:
    assert next_step(P, None, None, {}, 20_000, AMOUNT) == Step("pay", "topup-node-a-1", AMOUNT)


def test_a_funded_provider_needs_nothing_and_an_unknown_balance_never_pays() -> None:
    assert next_step(P, key(T + "1"), 50_000, {T + "1": "succeeded"}, 20_000, AMOUNT) == Step("none")
    assert next_step(P, key(T + "1"), None, {T + "1": "succeeded"}, 20_000, AMOUNT) == Step("none")


def test_low_balance_pays_the_next_number() -> None:
    assert next_step(P, key(T + "1", T + "2"), 19_999, {T + "1": "succeeded", T + "2": "succeeded"},
                     20_000, AMOUNT) == Step("pay", "topup-node-a-3", AMOUNT)


def test_a_paid_but_undelivered_token_is_delivered_first_oldest_first() -> None:
    payouts = {T + "1": "succeeded", T + "2": "succeeded", T + "10": "succeeded"}
    assert next_step(P, key(T + "1"), 0, payouts, 20_000, AMOUNT) == Step("deliver", T + "2")
    assert next_step(P, None, None, {T + "1": "succeeded"}, 20_000, AMOUNT) == Step("deliver", T + "1")


def test_returned_and_lost_tokens_are_not_delivered_again() -> None:
    k = key(T + "1").model_copy(update={"returned": [T + "2"], "lost": [T + "3"]})
    payouts = {T + "1": "succeeded", T + "2": "succeeded", T + "3": "succeeded"}
    assert next_step(P, k, 0, payouts, 20_000, AMOUNT) == Step("pay", "topup-node-a-4", AMOUNT)


def test_one_under_way_blocks_another_and_failed_ones_are_skipped() -> None:
    assert next_step(P, key(), 0, {T + "1": "pending"}, 20_000, AMOUNT) == Step("none")
    assert next_step(P, None, None, {T + "1": "failed"}, 20_000, AMOUNT) == Step("pay", "topup-node-a-2", AMOUNT)


def test_a_suspended_provider_is_never_paid_again() -> None:
    k = key(T + "1").model_copy(update={"suspended": "top-up did not raise the balance"})
    assert next_step(P, k, 0, {T + "1": "succeeded"}, 20_000, AMOUNT) == Step("none")


def price(max_cost_msat: int, min_request_msat: int = 1) -> NodeModelPrice:
    return NodeModelPrice(prompt_msat_per_mtok=1, completion_msat_per_mtok=1, max_cost_msat=max_cost_msat,
                          min_request_msat=min_request_msat)


def test_top_ups_cover_the_dearest_reserve_of_the_node_capped() -> None:
    """With the old defaults (100 sat below 20 sat) a model reserving 120 sat answered 402 at a balance of 20-120
    sat: the threshold and the amount now cover the node's dearest reserve."""
    need = reserve_need_msat({"cheap": price(5_000), "dear": price(120_000)}, cap_msat=2_000_000)
    assert need == 120_000
    assert reserve_need_msat({"huge": price(50_000_000)}, cap_msat=2_000_000) == 2_000_000
    assert reserve_need_msat({}, cap_msat=2_000_000) == 0
    threshold, amount = sizing(20_000, 100_000, need, 0, 60_000)
    assert (threshold, amount) == (120_000, 120_000)
    assert next_step(P, key(T + "1"), 60_000, {T + "1": "succeeded"}, threshold, amount) == \
        Step("pay", "topup-node-a-2", 120_000)  # 60 sat used to be "funded"


def test_after_a_402_the_top_up_covers_what_the_refused_request_needed() -> None:
    threshold, amount = sizing(20_000, 100_000, 0, 450_500, 30_000)
    assert threshold == 450_500
    assert amount >= 450_500 - 30_000 + FEE_MARGIN_MSAT and amount % 1000 == 0  # whole sats, fees covered
    threshold, amount = sizing(20_000, 100_000, 0, 0, 30_000)
    assert (threshold, amount) == (20_000, 100_000)  # outside a 402 the configured figures stand


def test_credit_is_balance_plus_reserved_plus_spent() -> None:
    assert credited_msat({"balance": 10, "reserved": 5, "total_spent": 100}) == 115
    assert credited_msat({"balance": 10}) == 10
    for bad in (None, [], {"balance": "10"}, {"balance": True}, {"balance": 1, "reserved": None}):
        assert credited_msat(bad) is None


def test_what_an_answer_to_a_delivered_token_means() -> None:
    def verdict(status: int, body: object) -> str:
        return delivery_verdict(status, node_error(status, body))

    def err(code: str) -> dict[str, object]:
        e = {"message": "m", "type": "t", "code": code}
        return {"detail": {"error": e}, "error": e, "request_id": "r"}

    assert verdict(200, {"msats": 1}) == "landed"
    assert verdict(400, err("cashu_token_already_spent")) == "check"
    assert verdict(400, err("cashu_token_zero_value")) == "refused"
    assert verdict(400, err("invalid_cashu_token")) == "refused"
    assert verdict(422, err("cashu_token_swap_fees_exceed_amount")) == "refused"
    assert verdict(503, err("cashu_mint_unreachable")) == "retry"
    assert verdict(500, err("cashu_token_consumed")) == "retry"
    assert verdict(401, err("invalid_api_key")) == "retry"
    assert verdict(400, {"detail": "Invalid token format", "request_id": "r"}) == "retry"


def test_a_providers_top_ups_are_its_own_not_those_of_a_provider_whose_name_extends_it() -> None:
    from actors.vault.topup_plan import is_topup_of

    assert is_topup_of("node-a", "topup-node-a-3")
    assert not is_topup_of("node-a", "topup-node-a-2-1")  # node-a-2's first top-up
    assert is_topup_of("node-a-2", "topup-node-a-2-1")
    assert not is_topup_of("node-a", "topup-node-a-")
    assert not is_topup_of("node-a", "topup-node-b-1")
