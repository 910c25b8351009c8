"""The auto rail over HTTP: Cashu below the threshold, Lightning at or above it, one journaled fallback to the
other rail on a definite failure, the trace (initial_rail, final_rail, fallback) in the audit log, books balanced."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import aiohttp
import pytest

from actors.vault.wallets.auto import AutoWallet, choose_rail, other_rail
from actors.vault.wallets.simulated import SimulatedWallet, make_invoice
from arbstr.natsserver import NatsServer
from tests.support.stack import demo_config, start_stack, vault_section
from tests.vault.test_vault_rails import Rig, bearer, clean, me, post
from tests.support.vault_helpers import admin, new_agent, payout_outcome

THRESHOLD = 50_000


def test_choose_rail_by_amount() -> None:
    assert [choose_rail(a, THRESHOLD) for a in (1, 49_999, 50_000, 10**9)] == ["cashu", "cashu", "lightning",
                                                                               "lightning"]
    assert (other_rail("cashu"), other_rail("lightning")) == ("lightning", "cashu")


class AutoRig(Rig):
    def __init__(self, stack: Any, ln: SimulatedWallet, ecash: SimulatedWallet) -> None:
        super().__init__(stack, AutoWallet(ln, ecash))  # type: ignore[arg-type]
        self.ln, self.ecash = ln, ecash


@pytest.fixture
async def auto(fresh_nats: NatsServer, mock_upstream: str) -> AsyncIterator[AutoRig]:
    wallet = {"pay_wait_s": 1.0, "check_interval_s": 0.2, "fee_limit_min_msat": 500, "fee_limit_ppm": 0,
              "auto_threshold_msat": THRESHOLD}
    stack = await start_stack(demo_config(mock_upstream, vault=vault_section(wallet=wallet)), fresh_nats.url)
    # Cashu's fee reserve differs from Lightning's: the fallback must re-hold the other rail's fee limit.
    r = AutoRig(stack, SimulatedWallet(fee_limit_ppm=0, fee_limit_min_msat=500, name="sim-ln"),
                SimulatedWallet(fee_limit_ppm=0, fee_limit_min_msat=2_000, name="sim-cashu"))
    r.ln.balance_msat = 10_000_000  # the operator funded both rails
    await r.start_vault()
    yield r
    if r.host is not None:
        await r.stop_vault()
    await stack.stop()


async def funded(http: aiohttp.ClientSession, rig: AutoRig, name: str, msat: int) -> tuple[str, str]:
    agent_id, token = await new_agent(http, rig.stack, name, deposit_msat=msat)
    return agent_id, token


async def trace(http: aiohttp.ClientSession, rig: AutoRig, agent_id: str) -> list[tuple[str, dict[str, Any]]]:
    items = (await admin(http, rig.stack, "GET", f"/v1/admin/audit?agent={agent_id}", expect=200))["data"]
    return [(i["kind"], i["detail"]) for i in sorted(items, key=lambda i: i["seq"]) if i["kind"].startswith("payout")]


async def test_small_payouts_go_by_cashu_large_by_lightning(http, auto) -> None:
    agent_id, token = await funded(http, auto, "ava", 200_000)
    small, _, _ = make_invoice(THRESHOLD - 1_000)
    large, _, _ = make_invoice(THRESHOLD)
    # Each payout's outcome, not pay_wait_s's deadline (a loaded machine may answer 202 "pending" first).
    s1, p1 = await payout_outcome(http, auto.stack, token,
                                  *await post(http, auto, "/v1/vault/me/withdrawals", token, {"bolt11": small}))
    s2, p2 = await payout_outcome(http, auto.stack, token,
                                  *await post(http, auto, "/v1/vault/me/withdrawals", token, {"bolt11": large}))
    assert (s1, p1["rail"], p1["fee_limit_msat"], p1["fallback"]) == (200, "cashu", 2_000, False), p1
    assert (s2, p2["rail"], p2["fee_limit_msat"], p2["fallback"]) == (200, "lightning", 500, False), p2
    assert (auto.ecash.pay_calls, auto.ln.pay_calls) == (1, 1)
    settled = [d for k, d in await trace(http, auto, agent_id) if k == "payout_settled"]
    assert [(d["initial_rail"], d["final_rail"], d["fallback"]) for d in settled] == [
        ("cashu", "cashu", False), ("lightning", "lightning", False)]
    # An explicit rail wins over the amount.
    s3, p3 = await payout_outcome(http, auto.stack, token, *await post(
        http, auto, "/v1/vault/me/withdrawals", token, {"bolt11": make_invoice(1_000)[0], "rail": "lightning"}))
    assert (s3, p3["rail"]) == (200, "lightning")
    await clean(http, auto)


async def test_a_definite_failure_falls_back_once_and_the_trace_is_journaled(http, auto) -> None:
    agent_id, token = await funded(http, auto, "ben", 100_000)
    auto.ecash.rail_outcome["cashu"] = "fail"
    bolt11, payment_hash, _ = make_invoice(10_000)
    status, p = await payout_outcome(http, auto.stack, token,
                                     *await post(http, auto, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11}))
    assert (status, p["status"], p["initial_rail"], p["rail"], p["fallback"]) == (
        200, "succeeded", "cashu", "lightning", True), p
    assert (p["charged_msat"], auto.ecash.pay_calls, auto.ln.pay_calls) == (10_000, 1, 1)
    kinds = await trace(http, auto, agent_id)
    assert [k for k, _ in kinds] == ["payout_started", "payout_rerouted", "payout_settled"]
    rerouted, settled = kinds[1][1], kinds[2][1]
    assert (rerouted["from_rail"], rerouted["rail"], rerouted["fee_limit_msat"]) == ("cashu", "lightning", 500)
    assert "simulated failure on cashu" in rerouted["reason"]
    assert (settled["initial_rail"], settled["final_rail"], settled["fallback"]) == ("cashu", "lightning", True)
    assert (await me(http, auto, token))["balance_msat"] == 90_000
    await clean(http, auto)


async def test_both_rails_failing_release_once_with_no_second_fallback(http, auto) -> None:
    agent_id, token = await funded(http, auto, "cleo", 100_000)
    auto.ln.rail_outcome["lightning"] = "fail"
    auto.ecash.rail_outcome["cashu"] = "fail"
    status, p = await post(http, auto, "/v1/vault/me/withdrawals", token, {"bolt11": make_invoice(60_000)[0]})
    assert (status, p["status"], p["initial_rail"], p["rail"], p["fallback"]) == (
        200, "failed", "lightning", "cashu", True), p
    assert (auto.ln.pay_calls, auto.ecash.pay_calls) == (1, 1)
    failed = [d for k, d in await trace(http, auto, agent_id) if k == "payout_failed"]
    assert [(d["initial_rail"], d["final_rail"], d["fallback"]) for d in failed] == [("lightning", "cashu", True)]
    acct = await me(http, auto, token)
    assert (acct["balance_msat"], acct["withdrawn_msat"], acct["payouts_pending_msat"]) == (100_000, 0, 0)
    await clean(http, auto)


async def test_an_ambiguous_answer_never_falls_back(http, auto) -> None:
    _, token = await funded(http, auto, "dina", 100_000)
    auto.ecash.rail_outcome["cashu"] = "pending"
    status, p = await post(http, auto, "/v1/vault/me/withdrawals", token, {"bolt11": make_invoice(5_000)[0]})
    assert (status, p["status"], p["rail"], p["fallback"]) == (202, "pending", "cashu", False), p
    assert auto.ln.pay_calls == 0  # paying the other rail too could pay twice
    auto.ecash.resolve(p["reference"], succeed=True)
    for _ in range(100):
        r = await http.get(f"{auto.stack.url}/v1/vault/me/withdrawals/{p['payout_id']}", headers=bearer(token))
        if (await r.json())["status"] == "succeeded":
            break
        await asyncio.sleep(0.05)
    assert (await r.json())["status"] == "succeeded"
    await clean(http, auto)


async def test_a_crash_after_the_reroute_resumes_on_the_new_rail(http, auto) -> None:
    agent_id, token = await funded(http, auto, "emil", 100_000)
    auto.ecash.rail_outcome["cashu"] = "fail"
    auto.ln.rail_outcome["lightning"] = "raise"  # the fallback's send gets no answer: it stays pending
    status, p = await post(http, auto, "/v1/vault/me/withdrawals", token, {"bolt11": make_invoice(8_000)[0]})
    assert (status, p["status"], p["rail"], p["fallback"]) == (202, "pending", "lightning", True), p
    await auto.stop_vault()
    auto.ln.rail_outcome.pop("lightning")
    await auto.start_vault()  # recovery asks Lightning (not Cashu again) and sends it there once
    for _ in range(100):
        r = await http.get(f"{auto.stack.url}/v1/vault/me/withdrawals/{p['payout_id']}", headers=bearer(token))
        if r.status == 200 and (await r.json())["status"] == "succeeded":
            break
        await asyncio.sleep(0.05)
    view = await r.json()
    assert (view["status"], view["rail"], auto.ecash.pay_calls) == ("succeeded", "lightning", 1), view
    assert [k for k, _ in await trace(http, auto, agent_id)].count("payout_rerouted") == 1
    await clean(http, auto)
