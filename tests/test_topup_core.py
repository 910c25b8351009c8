"""The top-up decision as a pure function: deliver what was paid before paying again, never pay blind."""

from __future__ import annotations

from actors.vault.topup import Step, next_step
from schemas.vault import ProviderKey

P = "node-a"
T = "tok:operator:topup-node-a-"


def key(*delivered: str, api_key: str = "sk-1") -> ProviderKey:
    return ProviderKey(provider=P, url="http://n/v1", api_key=api_key, delivered=list(delivered))


def test_first_top_up_pays_number_one() -> None:
    assert next_step(P, None, None, {}, 20_000) == Step("pay", "topup-node-a-1")


def test_a_funded_provider_needs_nothing_and_an_unknown_balance_never_pays() -> None:
    assert next_step(P, key(T + "1"), 50_000, {T + "1": "succeeded"}, 20_000) == Step("none")
    assert next_step(P, key(T + "1"), None, {T + "1": "succeeded"}, 20_000) == Step("none")


def test_low_balance_pays_the_next_number() -> None:
    assert next_step(P, key(T + "1", T + "2"), 19_999, {T + "1": "succeeded", T + "2": "succeeded"},
                     20_000) == Step("pay", "topup-node-a-3")


def test_a_paid_but_undelivered_token_is_delivered_first_oldest_first() -> None:
    payouts = {T + "1": "succeeded", T + "2": "succeeded", T + "10": "succeeded"}
    assert next_step(P, key(T + "1"), 0, payouts, 20_000) == Step("deliver", T + "2")
    assert next_step(P, None, None, {T + "1": "succeeded"}, 20_000) == Step("deliver", T + "1")


def test_one_under_way_blocks_another_and_failed_ones_are_skipped() -> None:
    assert next_step(P, key(), 0, {T + "1": "pending"}, 20_000) == Step("none")
    assert next_step(P, None, None, {T + "1": "failed"}, 20_000) == Step("pay", "topup-node-a-2")


def test_a_suspended_provider_is_never_paid_again() -> None:
    k = key(T + "1").model_copy(update={"suspended": "top-up did not raise the balance"})
    assert next_step(P, k, 0, {T + "1": "succeeded"}, 20_000) == Step("none")
