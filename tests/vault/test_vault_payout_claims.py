"""Payouts that cannot be misdirected (issue 12): one invoice posted by two agents at the same moment is charged to
one of them only — across two vault instances — and a payout id (or idempotency key) repeated with other terms is
a 409, never the first payout answered for a different request."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest

from actors.vault.wallets.base import PayoutPlan
from actors.vault.wallets.simulated import make_invoice
from arbstr.natsserver import NatsServer
from tests.support.stack import demo_config, start_stack, vault_section
from tests.vault.test_vault_rails import clean, funded_by_invoice
from tests.vault.test_vault_rails_races import IdempotentWallet, second_instance
from tests.vault.test_vault_storm import assert_replay_equals_live
from tests.support.vault_helpers import Rig, books, me, post

RACES = 6


class SlowPlanningWallet(IdempotentWallet):
    """Decoding and planning an invoice takes a moment at a real node (DecodePayReq, a route probe): the window in
    which a check-then-act across agents lets two of them start paying one invoice."""

    async def plan_payout(self, bolt11: str, rail: str = "lightning") -> PayoutPlan:
        await asyncio.sleep(0.1)
        return await super().plan_payout(bolt11, rail)


@pytest.fixture
async def rig(fresh_nats: NatsServer, mock_upstream: str) -> AsyncIterator[Rig]:
    wallet = {"pay_wait_s": 5.0, "check_interval_s": 0.2, "fee_limit_min_msat": 500, "fee_limit_ppm": 0}
    stack = await start_stack(demo_config(mock_upstream, vault=vault_section(wallet=wallet)), fresh_nats.url)
    r = Rig(stack, SlowPlanningWallet())
    await r.start_vault()
    yield r
    if r.host is not None:
        await r.stop_vault()
    await stack.stop()


async def test_one_invoice_posted_by_two_agents_at_once_is_charged_once(http, rig) -> None:
    other = await second_instance(rig)  # requests spread over two vault instances by the queue group
    try:
        _, a = await funded_by_invoice(http, rig, "ann", 100_000)
        _, b = await funded_by_invoice(http, rig, "ben", 100_000)
        for i in range(RACES):
            bolt11, _, _ = make_invoice(1_000 + i)
            results = await asyncio.gather(*(post(http, rig, "/v1/vault/me/withdrawals", t, {"bolt11": bolt11})
                                             for t in (a, b)))
            statuses = sorted(s for s, _ in results)
            assert statuses == [200, 409], results
            assert [body["error"]["code"] for s, body in results if s == 409] == ["payout_conflict"]
        withdrawn = (await me(http, rig, a))["withdrawn_msat"] + (await me(http, rig, b))["withdrawn_msat"]
        assert withdrawn == sum(1_000 + i for i in range(RACES))  # the simulated rail charges no fee here
        assert rig.wallet.pay_calls == RACES
        assert (await books(http, rig.stack))["withdrawals_msat"] == withdrawn
        await clean(http, rig)
        await assert_replay_equals_live(rig.stack, [rig.actor, other.actor])
    finally:
        await other.stop()


async def test_a_payout_id_repeated_with_other_terms_is_409(http, rig) -> None:
    _, token = await funded_by_invoice(http, rig, "cal", 100_000)
    first = {"rail": "cashu", "amount_msat": 7_000, "payout_id": "w-1"}
    status, p = await post(http, rig, "/v1/vault/me/withdrawals", token, first)
    assert status == 200, p
    status, body = await post(http, rig, "/v1/vault/me/withdrawals", token, {**first, "amount_msat": 8_000})
    assert (status, body["error"]["code"], body["error"]["param"]) == (409, "payout_conflict", "payout_id")
    status, again = await post(http, rig, "/v1/vault/me/withdrawals", token, first)  # same terms: the same payout
    assert (status, again["payout_id"], again["token"]) == (200, p["payout_id"], p["token"])
    # The key names that payout and no other: a BOLT11 under it is a conflict too, and pays nothing.
    bolt11, _, _ = make_invoice(2_000)
    status, body = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11, "payout_id": "w-1"})
    assert (status, body["error"]["code"]) == (409, "payout_conflict")
    # A BOLT11 under its own key, then again on another rail or under another key's payout: 409.
    status, q = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11, "payout_id": "ln-1"})
    assert (status, q["rail"]) == (200, "lightning"), q
    status, body = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11, "rail": "cashu"})
    assert (status, body["error"]["code"]) == (409, "payout_conflict")
    other, _, _ = make_invoice(3_000)
    status, body = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": other, "payout_id": "ln-1"})
    assert (status, body["error"]["code"]) == (409, "payout_conflict")
    status, again = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11})
    assert (status, again["payout_id"]) == (200, q["payout_id"])  # the invoice alone names its payout
    assert (await me(http, rig, token))["withdrawn_msat"] == 7_000 + 2_000
    assert rig.wallet.pay_calls == 2  # the token and the invoice, each once
    await clean(http, rig)
