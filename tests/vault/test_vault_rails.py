"""Deposits and payouts over HTTP with the simulated wallet: invoices credited once, payouts journaled before
the rail is called, released only on a definite failure, recovered after a restart; books and reconciliation."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import aiohttp
import pytest

from actors.vault.wallets.simulated import SimulatedWallet, make_invoice
from arbstr.natsserver import NatsServer
from tests.support.stack import ADMIN_TOKEN
from tests.support.vault_helpers import (Rig, admin, assert_balanced, bearer, books, me, new_agent, payout_outcome,
                                         post, reconciled, simulated_rig)
from tests.support.waiting import eventually


@pytest.fixture
async def rig(fresh_nats: NatsServer, mock_upstream: str) -> AsyncIterator[Rig]:
    async with simulated_rig(fresh_nats.url, mock_upstream) as r:
        yield r


async def clean(http: aiohttp.ClientSession, rig: Rig) -> None:
    await reconciled(http, rig.stack)


async def funded_by_invoice(http: aiohttp.ClientSession, rig: Rig, name: str, msat: int) -> tuple[str, str]:
    agent_id, token = await new_agent(http, rig.stack, name)
    status, inv = await post(http, rig, "/v1/vault/me/deposits", token, {"rail": "lightning", "amount_msat": msat})
    assert status == 201, inv
    rig.wallet.settle_invoice(inv["payment_hash"])

    async def credited() -> bool:
        return (await me(http, rig, token)).get("balance_msat") == msat
    await eventually(credited)
    return agent_id, token


async def test_invoice_deposit_is_credited_once(http, rig) -> None:
    agent_id, token = await new_agent(http, rig.stack, "alice")
    status, inv = await post(http, rig, "/v1/vault/me/deposits", token, {"rail": "lightning", "amount_msat": 21_000})
    assert status == 201 and inv["status"] == "invoice" and inv["bolt11"].startswith("lnbcrt")
    assert (await me(http, rig, token))["balance_msat"] == 0  # an invoice credits nothing until paid
    rig.wallet.settle_invoice(inv["payment_hash"])

    async def credited() -> bool:
        return (await me(http, rig, token)).get("deposited_msat") == 21_000
    await eventually(credited)
    # The same settlement reported again (a replaying feed) and the vault restarting change nothing.
    await rig.actor.rails.credit_invoice(rig.wallet._history[-1])  # type: ignore[union-attr]
    await rig.stop_vault()
    await rig.start_vault()
    await eventually(credited)  # reachable again
    await asyncio.sleep(0.3)  # time for a replaying feed to (wrongly) credit again
    acct = await me(http, rig, token)
    assert (acct["deposited_msat"], acct["balance_msat"]) == (21_000, 21_000)
    audit = await admin(http, rig.stack, "GET", f"/v1/admin/audit?agent={agent_id}", expect=200)
    kinds = [i["kind"] for i in audit["data"]]
    assert kinds.count("deposited") == 1 and kinds.count("invoice_issued") == 1
    credit = next(i for i in audit["data"] if i["kind"] == "deposited")
    assert credit["detail"]["rail"] == "lightning" and credit["detail"]["reference"] == "settle_index=1"
    await clean(http, rig)


async def test_invoice_paid_while_the_vault_was_down_is_credited_at_start(http, rig) -> None:
    _, token = await new_agent(http, rig.stack, "bob")
    _, inv = await post(http, rig, "/v1/vault/me/deposits", token, {"rail": "lightning", "amount_msat": 5_000})
    await rig.stop_vault()
    rig.wallet.settle_invoice(inv["payment_hash"], amount_msat=6_000)  # overpaid: the paid amount counts
    await rig.start_vault()

    async def credited() -> bool:
        return (await me(http, rig, token)).get("balance_msat") == 6_000
    await eventually(credited)
    await clean(http, rig)


async def test_token_deposit_credited_once_and_double_redemption_refused(http, rig) -> None:
    _, token = await new_agent(http, rig.stack, "carol")
    ecash = rig.wallet.mint_token(7_000)
    status, body = await post(http, rig, "/v1/vault/me/deposits", token, {"rail": "cashu", "token": ecash})
    assert (status, body["status"], body["balance_msat"]) == (201, "credited", 7_000), body
    status, body = await post(http, rig, "/v1/vault/me/deposits", token, {"rail": "cashu", "token": ecash})
    assert (status, body["error"]["code"]) == (409, "token_spent")
    assert (await me(http, rig, token))["balance_msat"] == 7_000
    status, body = await post(http, rig, "/v1/vault/me/deposits", token, {"rail": "cashu"})
    assert status == 400
    await clean(http, rig)


async def test_payout_is_charged_the_invoice_amount_plus_fee(http, rig) -> None:
    agent_id, token = await funded_by_invoice(http, rig, "dave", 100_000)
    rig.wallet.fee_msat = 120
    bolt11, payment_hash, _ = make_invoice(30_000)
    status, p = await payout_outcome(http, rig.stack, token,
                                     *await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11}))
    assert status == 200, p
    assert (p["status"], p["payout_id"], p["amount_msat"], p["fee_msat"], p["charged_msat"]) == (
        "succeeded", payment_hash, 30_000, 120, 30_120)
    acct = await me(http, rig, token)
    assert (acct["balance_msat"], acct["withdrawn_msat"], acct["pending_msat"]) == (100_000 - 30_120, 30_120, 0)
    # The same invoice again pays nothing more.
    status, again = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11})
    assert (status, again["status"], rig.wallet.pay_calls) == (200, "succeeded", 1)
    # An amount of the caller's choosing changes nothing: the invoice's own amount is what is paid and charged.
    other, other_hash, _ = make_invoice(20_000)
    status, p = await payout_outcome(http, rig.stack, token, *await post(
        http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": other, "amount_msat": 1}))
    assert (status, p["status"], p["amount_msat"], p["charged_msat"]) == (200, "succeeded", 20_000, 20_120), p
    assert (await me(http, rig, token))["withdrawn_msat"] == 30_120 + 20_120
    # Unknown fields are refused, not ignored.
    status, body = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11, "amount": 1})
    assert status == 400
    listed = await admin(http, rig.stack, "GET", "/v1/admin/payouts", expect=200)
    assert [x["payout_id"] for x in listed["data"]] == [payment_hash, other_hash]
    await clean(http, rig)


async def test_payout_refusals(http, rig) -> None:
    _, token = await funded_by_invoice(http, rig, "erin", 10_000)
    no_amount, _, _ = make_invoice(0)
    cases = [({"bolt11": "lnbc1notaninvoice"}, 400, "invalid_invoice"),
             ({"bolt11": no_amount}, 400, "invoice_without_amount"),
             ({"bolt11": make_invoice(9_600)[0]}, 402, "insufficient_balance")]  # 9,600 + 500 fee limit > 10,000
    for body, want_status, want_code in cases:
        status, reply = await post(http, rig, "/v1/vault/me/withdrawals", token, body)
        assert (status, reply["error"]["code"]) == (want_status, want_code), reply
    assert rig.wallet.pay_calls == 0
    agent2, token2 = await new_agent(http, rig.stack, "frank", policy={"max_tx_msat": 2_000})
    await admin(http, rig.stack, "POST", f"/v1/admin/agents/{agent2}/deposits", {"amount_msat": 50_000},
                expect=201)
    rig.wallet.balance_msat += 50_000  # the operator's deposit arrived out of band
    status, reply = await post(http, rig, "/v1/vault/me/withdrawals", token2, {"bolt11": make_invoice(1_600)[0]})
    assert (status, reply["error"]["code"]) == (403, "max_tx_exceeded")  # 1,600 + 500 fee limit > 2,000
    await clean(http, rig)


async def test_definite_failure_releases_and_pending_never_does(http, rig) -> None:
    _, token = await funded_by_invoice(http, rig, "gina", 50_000)
    rig.wallet.outcome = "fail"
    status, p = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": make_invoice(10_000)[0]})
    assert (status, p["status"], p["balance_msat"]) == (200, "failed", 50_000), p
    rig.wallet.outcome = "pending"
    bolt11, h, _ = make_invoice(10_000)
    status, p = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11})
    assert (status, p["status"]) == (202, "pending")
    await asyncio.sleep(0.6)  # several check rounds: in flight stays held
    acct = await me(http, rig, token)
    assert (acct["balance_msat"], acct["payouts_pending_msat"]) == (50_000 - 10_500, 10_500)
    assert_balanced(await books(http, rig.stack))
    rig.wallet.resolve(h, succeed=True)

    async def done() -> bool:
        r = await http.get(f"{rig.stack.url}/v1/vault/me/withdrawals/{h}", headers=bearer(token))
        return (await r.json())["status"] == "succeeded"
    await eventually(done)
    acct = await me(http, rig, token)
    assert (acct["balance_msat"], acct["withdrawn_msat"], acct["pending_msat"]) == (40_000, 10_000, 0)
    await clean(http, rig)


async def test_ambiguous_error_keeps_the_payout_and_a_restart_finishes_it_once(http, rig) -> None:
    _, token = await funded_by_invoice(http, rig, "hank", 50_000)
    rig.wallet.outcome = "raise"  # the call never reached the rail, as far as anyone can tell
    bolt11, h, _ = make_invoice(20_000)
    status, p = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11})
    assert (status, p["status"]) == (202, "pending")
    await rig.stop_vault()  # crash window: journaled, never sent
    assert rig.wallet.payments == {}
    rig.wallet.outcome = "succeed"
    await rig.start_vault()  # recovery asks the rail, finds nothing, sends it: exactly one payment

    async def done() -> bool:
        return (await me(http, rig, token)).get("withdrawn_msat") == 20_000
    await eventually(done)
    assert list(rig.wallet.payments) == [h]
    listed = await http.get(f"{rig.stack.url}/v1/vault/me/withdrawals", headers=bearer(token))
    assert [x["status"] for x in (await listed.json())["data"]] == ["succeeded"]
    await clean(http, rig)


async def test_payout_sent_before_a_crash_is_settled_not_resent(http, rig) -> None:
    _, token = await funded_by_invoice(http, rig, "ivy", 50_000)
    rig.wallet.outcome = "pending"
    bolt11, h, _ = make_invoice(20_000)
    status, _ = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11})
    assert status == 202
    await rig.stop_vault()
    rig.wallet.resolve(h, succeed=True)  # it landed while the vault was down
    await rig.start_vault()

    async def done() -> bool:
        return (await me(http, rig, token)).get("withdrawn_msat") == 20_000
    await eventually(done)
    assert rig.wallet.pay_calls == 1
    await clean(http, rig)


async def test_another_agent_cannot_pay_the_same_invoice(http, rig) -> None:
    _, t1 = await funded_by_invoice(http, rig, "jack", 50_000)
    _, t2 = await funded_by_invoice(http, rig, "kate", 50_000)
    bolt11, _, _ = make_invoice(1_000)
    assert (await post(http, rig, "/v1/vault/me/withdrawals", t1, {"bolt11": bolt11}))[0] == 200
    status, body = await post(http, rig, "/v1/vault/me/withdrawals", t2, {"bolt11": bolt11})
    assert (status, body["error"]["code"]) == (409, "payout_conflict")
    await clean(http, rig)


async def test_reconcile_reports_a_shortfall_and_fails_closed(http, rig) -> None:
    agent_id, token = await funded_by_invoice(http, rig, "lena", 10_000)
    await clean(http, rig)
    rig.wallet.balance_msat -= 1  # an asset went missing
    rec = await admin(http, rig.stack, "GET", "/v1/admin/reconcile", expect=200)
    assert (rec["ok"], rec["surplus_msat"], rec["liabilities_msat"], rec["frozen"]) == (False, -1, 10_000, True)
    # Closed: no new hold, no payout ...
    r = await http.post(f"{rig.stack.url}/v1/chat/completions", headers=bearer(token),
                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    body = await r.json()
    assert (r.status, body["error"]["code"], r.headers.get("x-should-retry")) == (503, "vault_frozen", "false")
    status, body = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": make_invoice(1_000)[0]})
    assert (status, body["error"]["code"]) == (503, "vault_frozen")
    # ... but deposits still come in.
    await admin(http, rig.stack, "POST", f"/v1/admin/agents/{agent_id}/deposits", {"amount_msat": 500}, expect=201)
    # Clearing is refused while the shortfall persists, ...
    r = await http.post(f"{rig.stack.url}/v1/admin/reconcile/clear", headers=bearer(ADMIN_TOKEN), json={})
    assert (r.status, (await r.json())["error"]["code"]) == (409, "shortfall_persists")
    # ... allowed once the wallet is whole again, and the vault serves again.
    rig.wallet.balance_msat += 1
    r = await http.post(f"{rig.stack.url}/v1/admin/reconcile/clear", headers=bearer(ADMIN_TOKEN))
    rec = await r.json()
    assert (r.status, rec["ok"], rec["frozen"]) == (200, True, False), rec
    r = await http.post(f"{rig.stack.url}/v1/chat/completions", headers=bearer(token),
                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status == 200, await r.text()
    await clean(http, rig)


async def test_the_freeze_survives_a_restart_and_force_clears(http, rig) -> None:
    _, token = await funded_by_invoice(http, rig, "mona", 10_000)
    rig.wallet.balance_msat -= 5_000
    assert (await admin(http, rig.stack, "GET", "/v1/admin/reconcile", expect=200))["frozen"] is True
    await rig.stop_vault()
    rig.wallet.balance_msat += 5_000  # even a whole wallet does not reopen it: only an operator does
    await rig.start_vault()
    status, body = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": make_invoice(1_000)[0]})
    assert (status, body["error"]["code"]) == (503, "vault_frozen")
    rig.wallet.balance_msat -= 5_000
    r = await http.post(f"{rig.stack.url}/v1/admin/reconcile/clear", headers=bearer(ADMIN_TOKEN),
                        json={"force": True})
    assert (r.status, (await r.json())["frozen"]) == (200, False)
    r = await http.post(f"{rig.stack.url}/v1/admin/reconcile/clear", headers=bearer(token), json={"force": True})
    assert r.status == 403  # an agent token is not an operator
    rig.wallet.balance_msat += 5_000
    await clean(http, rig)


async def test_token_payout_is_idempotent_and_shows_its_token_to_its_agent_only(http, rig) -> None:
    _, token = await funded_by_invoice(http, rig, "nora", 20_000)
    _, other = await funded_by_invoice(http, rig, "otto", 1_000)
    req = {"rail": "cashu", "amount_msat": 7_000, "payout_id": "w-1"}
    status, p = await post(http, rig, "/v1/vault/me/withdrawals", token, req)
    assert (status, p["status"], p["rail"], p["amount_msat"], p["charged_msat"]) == (200, "succeeded", "cashu",
                                                                                    7_000, 7_000), p
    assert p["token"].startswith("simtoken_")
    status, again = await post(http, rig, "/v1/vault/me/withdrawals", token, req)
    assert (status, again["payout_id"], again["token"]) == (200, p["payout_id"], p["token"])
    assert (await me(http, rig, token))["withdrawn_msat"] == 7_000  # once
    r = await http.get(f"{rig.stack.url}/v1/vault/me/withdrawals/{p['payout_id']}", headers=bearer(token))
    assert (await r.json())["token"] == p["token"]
    r = await http.get(f"{rig.stack.url}/v1/vault/me/withdrawals/{p['payout_id']}", headers=bearer(other))
    assert r.status == 404
    listed = await admin(http, rig.stack, "GET", "/v1/admin/payouts", expect=200)
    assert all(x["token"] == "" for x in listed["data"])  # the operator's list never carries ecash
    # A token payout needs an amount; Lightning cannot pay out as a token.
    status, body = await post(http, rig, "/v1/vault/me/withdrawals", token, {"rail": "cashu"})
    assert (status, body["error"]["code"]) == (400, "invalid_value")
    status, body = await post(http, rig, "/v1/vault/me/withdrawals", token, {"rail": "lightning", "amount_msat": 5})
    assert (status, body["error"]["code"]) == (400, "invalid_value")
    await clean(http, rig)


def test_fee_limit_is_never_zero_and_wallet_config_is_checked() -> None:
    from actors.vault.wallets import build_wallet
    from actors.vault.wallets.base import lightning_fee_limit_msat
    from schemas.config import ConfigError, parse_config

    assert lightning_fee_limit_msat(1_000_000, 5_000, 1_000) == 5_000
    assert lightning_fee_limit_msat(10, 5_000, 1_000) == 1_000
    assert lightning_fee_limit_msat(10, 0, 0) == 1
    cfg = parse_config({"vault": {"wallet": {"fee_limit_ppm": 2_000}}})
    assert cfg.vault is not None and isinstance(build_wallet(cfg.vault.wallet), SimulatedWallet)
    with pytest.raises(ConfigError, match=r"needs \[vault.wallet.lnd\]"):
        parse_config({"vault": {"wallet": {"kind": "lnd"}}})
    with pytest.raises(ConfigError, match=r"needs \[vault.wallet.cashu\]"):
        parse_config({"vault": {"wallet": {"kind": "auto", "lnd": {"macaroon_hex": "02"}}}})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"vault": {"wallet": {"kynd": "simulated"}}})


async def test_a_withdrawal_over_the_approval_threshold_waits_for_a_human(http, rig) -> None:
    agent_id, token = await funded_by_invoice(http, rig, "quinn", 100_000)
    await admin(http, rig.stack, "PATCH", f"/v1/admin/agents/{agent_id}/policy",
                {"approval_over_msat": 10_000, "approval_timeout_s": 1}, expect=200)
    # Held, not sent, listed for the operator.
    status, p = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": make_invoice(20_000)[0]})
    assert (status, p["status"], rig.wallet.pay_calls) == (202, "awaiting_approval", 0), p
    assert (await me(http, rig, token))["balance_msat"] == 100_000 - 20_500
    queue = (await admin(http, rig.stack, "GET", "/v1/admin/approvals", expect=200))["data"]
    assert [(a["request_id"], a["kind"], a["amount_msat"]) for a in queue] == [(p["payout_id"], "payout", 20_500)]
    # Approved: sent once.
    done = await admin(http, rig.stack, "POST", f"/v1/admin/approvals/{p['payout_id']}/approve", expect=200)
    assert done["state"] == "approved"

    async def paid() -> bool:
        r = await http.get(f"{rig.stack.url}/v1/vault/me/withdrawals/{p['payout_id']}", headers=bearer(token))
        return (await r.json())["status"] == "succeeded"
    await eventually(paid)
    assert rig.wallet.pay_calls == 1
    # Denied: released, never sent.
    status, q = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": make_invoice(15_000)[0]})
    assert (status, q["status"]) == (202, "awaiting_approval")
    await admin(http, rig.stack, "POST", f"/v1/admin/approvals/{q['payout_id']}/deny", {"reason": "not today"},
                expect=200)
    r = await http.get(f"{rig.stack.url}/v1/vault/me/withdrawals/{q['payout_id']}", headers=bearer(token))
    view = await r.json()
    assert (view["status"], view["reason"]) == ("failed", "denied by an operator: not today")
    # Nobody answers: released when the approval times out.
    status, t = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": make_invoice(12_000)[0]})
    assert status == 202

    async def timed_out() -> bool:
        r = await http.get(f"{rig.stack.url}/v1/vault/me/withdrawals/{t['payout_id']}", headers=bearer(token))
        return (await r.json())["reason"] == "approval timed out"
    await eventually(timed_out, timeout_s=5.0)
    assert rig.wallet.pay_calls == 1
    assert (await me(http, rig, token))["balance_msat"] == 100_000 - 20_000  # only the approved one left
    await clean(http, rig)
