"""The LND rail against a real gRPC node over TLS (tests/support/lnd_node.py) that checks the macaroon on every call.

Wallet level: the macaroon is checked before the vault trusts the node, deposits are reported once, payouts end
succeeded / failed / in flight as the node says, a repeat send falls back to tracking. Vault level (a VaultActor
with the LND wallet injected): credited once across replays and restarts, charged the invoice's amount, a crash
after the journal or after the send ends in exactly one payment, in flight never released; books balanced and
reconciliation clean after each.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import aiohttp
import bolt11
import grpc
import pytest
from pydantic import SecretStr

from actors.vault.wallets.base import PayoutPlan, SettledInvoice, WalletError
from actors.vault.wallets.lnd import SEND_PAYMENT_V2, LndError, LndWallet, ln, routerrpc
from actors.vault.wallets.simulated import make_invoice
from arbstr.natsserver import NatsServer
from schemas.config import LndConfig
from tests.support.lnd_node import LndNode, mint_macaroon
from tests.support.stack import Stack
from tests.support.vault_helpers import Rig as BaseRig
from tests.support.vault_helpers import admin, bearer, me, new_agent, payout_outcome, post, reconciled, vault_rig
from tests.support.waiting import eventually

FEE_MIN = 500  # every payout's fee limit (ppm 0): amount + 500 is held


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[LndNode]:
    n = await LndNode(tmp_path / "lnd").start()
    yield n
    await n.stop()


def lnd_config(node: LndNode, macaroon: Optional[bytes] = None, **overrides: Any) -> LndConfig:
    mac = node.vault_macaroon() if macaroon is None else macaroon
    return LndConfig(**{"host": node.host, "tls_cert_path": str(node.cert_path),
                        "macaroon_hex": SecretStr(mac.hex()), "timeout_s": 3.0, **overrides})


def make_wallet(node: LndNode, macaroon: Optional[bytes] = None, pay_wait_s: float = 1.0) -> LndWallet:
    return LndWallet(lnd_config(node, macaroon), fee_limit_ppm=0, fee_limit_min_msat=FEE_MIN,
                     pay_wait_s=pay_wait_s)


@pytest.fixture
async def wallet(node: LndNode) -> AsyncIterator[LndWallet]:
    w = make_wallet(node, pay_wait_s=0.3)
    await w.start()
    yield w
    await w.stop()


# --- wallet level -----------------------------------------------------------------------------------------
async def test_start_refuses_a_macaroon_that_can_do_more_than_the_vault_needs(node: LndNode, tmp_path: Path
                                                                               ) -> None:
    admin_mac = node.admin_macaroon()
    with pytest.raises(LndError, match="grants more than the vault needs.*onchain:write") as e:
        await make_wallet(node, admin_mac).start()
    assert admin_mac.hex() not in str(e.value) and admin_mac.hex()[:20] not in str(e.value)
    narrow = mint_macaroon(node.root_key, {"info": ["read"], "invoices": ["read", "write"], "offchain": ["read"]})
    with pytest.raises(LndError, match="lacks.*offchain:write"):
        await make_wallet(node, narrow).start()
    assert sum(node.calls.values()) == 0  # refused before a single call reached the node
    # The same check for a macaroon file (binary, as LND writes it).
    path = tmp_path / "admin.macaroon"
    path.write_bytes(admin_mac)
    cfg = LndConfig(host=node.host, tls_cert_path=str(node.cert_path), macaroon_path=str(path))
    with pytest.raises(LndError, match="grants more"):
        await LndWallet(cfg).start()


async def test_a_macaroon_the_node_did_not_bake_is_refused(node: LndNode) -> None:
    forged = mint_macaroon(b"\x00" * 32, {"info": ["read"], "invoices": ["read", "write"],
                                         "offchain": ["read", "write"]})
    with pytest.raises(LndError, match="UNAUTHENTICATED") as e:
        await make_wallet(node, forged).start()
    assert forged.hex()[:40] not in str(e.value)
    expired = mint_macaroon(node.root_key, {"info": ["read"], "invoices": ["read", "write"],
                                            "offchain": ["read", "write"]},
                            caveats=("time-before 2001-01-01T00:00:00Z",))
    with pytest.raises(LndError, match="PERMISSION_DENIED"):
        await make_wallet(node, expired).start()
    # The node enforces each RPC's permission: an info-only macaroon cannot send a payment.
    info_only = mint_macaroon(node.root_key, {"info": ["read"]})
    async with grpc.aio.secure_channel(node.host, grpc.ssl_channel_credentials(node.cert_path.read_bytes())) as ch:
        send = ch.unary_stream(SEND_PAYMENT_V2, request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=ln.Payment.FromString)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            async for _ in send(routerrpc.SendPaymentRequest(payment_request=make_invoice(1_000)[0]),
                                metadata=(("macaroon", info_only.hex()),), timeout=3):
                pass
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert node.payments == {}


async def test_identity_is_the_node_pubkey_and_assets_are_the_channel_balance(node: LndNode,
                                                                              wallet: LndWallet) -> None:
    assert wallet.identity == "lnd:" + node.pubkey and len(node.pubkey) == 66
    node.local_balance_msat = 123_456
    assert await wallet.assets_msat() == 123_456
    with pytest.raises(WalletError) as e:
        await wallet.redeem_token("cashuAbc")
    assert (e.value.code, e.value.status) == ("rail_unavailable", 400)
    with pytest.raises(WalletError, match="no ecash"):
        await wallet.plan_token_payout("tok:x", 1_000)


async def test_an_invoice_settled_is_reported_once_whatever_the_node_replays(node: LndNode,
                                                                            wallet: LndWallet) -> None:
    before = await wallet.create_invoice(7_000, "early", 3_600)
    node.settle(before.payment_hash)  # settled before anyone listened, from cursor 0: LND replays nothing
    inv = await wallet.create_invoice(21_000, "arbstr deposit", 600)
    assert (inv.amount_msat, inv.bolt11[:8]) == (21_000, "lnbcrt21")
    assert abs(inv.expires_at_ms - (time.time() + 600) * 1000) < 5_000
    reported: list[SettledInvoice] = []

    async def on_settled(s: SettledInvoice) -> None:
        reported.append(s)

    watch = asyncio.create_task(wallet.watch_invoices(0, on_settled))

    async def count(n: int) -> bool:
        return len(reported) == n
    await eventually(lambda: count(1))  # the one settled before: found by listing
    node.settle(inv.payment_hash, amount_msat=22_000)  # overpaid: the paid amount is reported
    await eventually(lambda: count(2))
    node.replay()  # the node re-sends what it already reported
    await asyncio.sleep(0.2)
    node.end_subscriptions()
    await asyncio.wait_for(watch, 3)  # a stream that ends returns (the vault resubscribes)
    assert [(s.payment_hash, s.amount_msat, s.settle_index) for s in reported] == [
        (before.payment_hash, 7_000, 1), (inv.payment_hash, 22_000, 2)]
    # Resubscribed from the cursor, to a node that replays everything first: only the new one is reported.
    node.replay_on_subscribe = True
    third = await wallet.create_invoice(1_000, "", 600)
    node.settle(third.payment_hash)
    watch = asyncio.create_task(wallet.watch_invoices(2, on_settled))
    await eventually(lambda: count(3))
    await asyncio.sleep(0.2)
    watch.cancel()
    assert [s.settle_index for s in reported] == [1, 2, 3] and node.subscription_requests == [0, 2]


async def test_payouts_end_as_the_node_says(node: LndNode, wallet: LndWallet) -> None:
    node.local_balance_msat = 1_000_000
    bolt11, h, _ = make_invoice(30_000)
    plan = await wallet.plan_payout(bolt11, "lightning")
    assert (plan.payment_hash, plan.amount_msat, plan.fee_limit_msat, plan.reference) == (h, 30_000, FEE_MIN, h)
    node.fee_msat = 120
    status = await wallet.pay(plan)
    assert (status.state, status.fee_msat, len(status.preimage)) == ("succeeded", 120, 64)
    assert node.local_balance_msat == 1_000_000 - 30_120
    assert (await wallet.check_payout(plan)).state == "succeeded"

    node.fee_msat = FEE_MIN + 1  # no route within the fee limit: a definite failure
    failing = await wallet.plan_payout(make_invoice(10_000)[0], "lightning")
    status = await wallet.pay(failing)
    assert (status.state, status.reason) == ("failed", "FAILURE_REASON_NO_ROUTE")
    assert (await wallet.check_payout(failing)).state == "failed"
    assert node.local_balance_msat == 1_000_000 - 30_120  # nothing left

    node.fee_msat, node.outcome = 0, "in_flight"
    slow = await wallet.plan_payout(make_invoice(20_000)[0], "lightning")
    assert (await wallet.pay(slow)).state == "in_flight"  # gave up listening: never "failed" on a timeout
    assert (await wallet.check_payout(slow)).state == "in_flight"
    assert await wallet.assets_msat() == 1_000_000 - 30_120  # the HTLC's lock still counts as ours
    node.resolve(slow.payment_hash, succeed=True)
    assert (await wallet.check_payout(slow)).state == "succeeded"
    assert await wallet.assets_msat() == 1_000_000 - 30_120 - 20_000


async def test_a_repeat_send_follows_the_first_payment(node: LndNode, wallet: LndWallet) -> None:
    node.local_balance_msat, node.outcome = 1_000_000, "in_flight"
    plan = await wallet.plan_payout(make_invoice(40_000)[0], "lightning")
    assert (await wallet.check_payout(plan)).state == "not_found"
    assert (await wallet.pay(plan)).state == "in_flight"
    # A second send of the same hash is refused by the node (ALREADY_EXISTS); its fate is the first one's.
    second = asyncio.create_task(wallet.pay(plan))
    # The second send reaches the node before the first one is resolved (a fixed sleep lost that race under load).
    await eventually(lambda: node.send_counts.get(plan.payment_hash, 0) == 2, timeout_s=10.0, what="the second send")
    node.resolve(plan.payment_hash, succeed=True)
    status = await second
    assert status.state == "succeeded"
    assert node.send_counts[plan.payment_hash] == 2 and node.local_balance_msat == 1_000_000 - 40_000
    # And after success a third send pays nothing more.
    assert (await wallet.pay(plan)).state == "succeeded" and node.local_balance_msat == 960_000


async def test_a_send_the_node_refused_is_not_a_failure_unless_it_can_never_be_paid(node: LndNode,
                                                                                   wallet: LndWallet) -> None:
    node.local_balance_msat, node.outcome = 1_000_000, "unavailable"
    plan = await wallet.plan_payout(make_invoice(5_000)[0], "lightning")
    with pytest.raises(LndError, match="UNAVAILABLE"):
        await wallet.pay(plan)  # ambiguous for the vault: it stays pending and is checked later
    assert (await wallet.check_payout(plan)).state == "not_found"
    # An invoice that expired between the plan and the send can never be paid: that refusal is definite.
    node.outcome = "succeed"
    stale, stale_hash, _, _ = node.make_invoice(5_000, expiry_s=60, date=int(time.time()) - 120)
    status = await wallet.pay(PayoutPlan("lightning", stale_hash.hex(), 5_000, FEE_MIN, stale_hash.hex(), stale))
    assert (status.state, "expired" in status.reason) == ("failed", True)
    assert node.payments == {}


async def test_plan_payout_refusals(node: LndNode, wallet: LndWallet) -> None:
    mainnet = bolt11.decode(make_invoice(5_000)[0])
    mainnet.currency = "bc"
    cases = [(make_invoice(0)[0], "invoice_without_amount", 400),
             (node.make_invoice(5_000, expiry_s=60, date=int(time.time()) - 120)[0], "invoice_expired", 400),
             ("lnbcrt1garbage", "invalid_invoice", 400),
             (bolt11.encode(mainnet, os.urandom(32).hex()), "invalid_invoice", 400)]  # not the node's network
    for invoice, code, status in cases:
        with pytest.raises(WalletError) as e:
            await wallet.plan_payout(invoice, "lightning")
        assert (e.value.code, e.value.status) == (code, status), e.value.message
    with pytest.raises(WalletError, match="cashu rail") as e:
        await wallet.plan_payout(make_invoice(5_000)[0], "cashu")
    await node.stop()
    with pytest.raises(WalletError) as e:
        await wallet.plan_payout(make_invoice(5_000)[0], "lightning")
    assert (e.value.code, e.value.status) == ("rail_unavailable", 503)
    with pytest.raises(WalletError) as e:
        await wallet.create_invoice(1_000, "", 600)
    assert (e.value.code, e.value.status) == ("rail_unavailable", 503)


# --- vault level --------------------------------------------------------------------------------------------
class Rig(BaseRig):
    def __init__(self, stack: Stack, node: LndNode) -> None:
        super().__init__(stack, make_wallet(node, pay_wait_s=1.0))
        self.node = node


@pytest.fixture
async def rig(fresh_nats: NatsServer, mock_upstream: str, node: LndNode) -> AsyncIterator[Rig]:
    wallet = {"pay_wait_s": 0.5, "check_interval_s": 0.2, "fee_limit_min_msat": FEE_MIN, "fee_limit_ppm": 0}
    async with vault_rig(fresh_nats.url, mock_upstream, wallet, lambda stack: Rig(stack, node)) as r:
        yield r


async def clean(http: aiohttp.ClientSession, rig: Rig) -> None:
    rec = await reconciled(http, rig.stack)
    assert rec["wallets"] == {"lnd:" + rig.node.pubkey: rec["assets_msat"]}, rec


async def deposit(http: aiohttp.ClientSession, rig: Rig, token: str, msat: int) -> dict[str, Any]:
    status, inv = await post(http, rig, "/v1/vault/me/deposits", token, {"rail": "lightning", "amount_msat": msat})
    assert status == 201 and inv["status"] == "invoice", inv
    return inv


async def funded(http: aiohttp.ClientSession, rig: Rig, name: str, msat: int) -> tuple[str, str]:
    agent_id, token = await new_agent(http, rig.stack, name)
    inv = await deposit(http, rig, token, msat)
    rig.node.settle(inv["payment_hash"])

    async def credited() -> bool:
        return (await me(http, rig, token)).get("balance_msat") == msat
    await eventually(credited)
    return agent_id, token


async def kinds(http: aiohttp.ClientSession, rig: Rig, agent_id: str) -> list[str]:
    audit = await admin(http, rig.stack, "GET", f"/v1/admin/audit?agent={agent_id}", expect=200)
    return [i["kind"] for i in audit["data"]]


async def test_a_settled_invoice_is_credited_once_across_replays_and_restarts(http, rig: Rig) -> None:
    agent_id, token = await funded(http, rig, "alice", 21_000)
    later = await deposit(http, rig, token, 5_000)
    rig.node.replay()  # the feed repeats itself
    # The same settlement reaching the vault again (whatever path) credits nothing more.
    await rig.actor.rails.credit_invoice(SettledInvoice(  # type: ignore[union-attr]
        rig.node.settled()[0].payment_hash.hex(), 21_000, 1))
    await asyncio.sleep(0.3)
    assert (await me(http, rig, token))["deposited_msat"] == 21_000
    await rig.stop_vault()
    rig.node.settle(later["payment_hash"])  # paid while the vault was down
    rig.node.replay_on_subscribe = True  # and the node replays everything when the vault comes back
    await rig.start_vault()

    async def both() -> bool:
        return (await me(http, rig, token)).get("deposited_msat") == 26_000
    await eventually(both)
    await asyncio.sleep(0.3)
    acct = await me(http, rig, token)
    assert (acct["deposited_msat"], acct["balance_msat"]) == (26_000, 26_000)
    assert (await kinds(http, rig, agent_id)).count("deposited") == 2
    assert rig.node.subscription_requests == [0, 1]  # resumed from the journaled cursor
    await clean(http, rig)


async def test_the_first_deposit_paid_while_the_vault_was_down_is_credited_at_start(http, rig: Rig) -> None:
    _, token = await new_agent(http, rig.stack, "bob")
    inv = await deposit(http, rig, token, 5_000)
    await rig.stop_vault()
    rig.node.settle(inv["payment_hash"], amount_msat=6_000)  # overpaid: the paid amount counts
    await rig.start_vault()  # cursor 0: LND replays nothing, the wallet lists what settled

    async def credited() -> bool:
        return (await me(http, rig, token)).get("balance_msat") == 6_000
    await eventually(credited)
    assert rig.node.subscription_requests == [0, 0] and rig.node.calls["ListInvoices"] >= 2
    await clean(http, rig)


async def test_a_withdrawal_is_charged_the_invoices_amount_not_the_one_asked(http, rig: Rig) -> None:
    _, token = await funded(http, rig, "carol", 100_000)
    rig.node.fee_msat = 120
    bolt11, h, _ = make_invoice(30_000)
    status, p = await payout_outcome(http, rig.stack, token, *await post(
        http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11, "amount_msat": 25_000}))
    assert status == 200, p
    assert (p["status"], p["payout_id"], p["amount_msat"], p["fee_msat"], p["charged_msat"]) == (
        "succeeded", h, 30_000, 120, 30_120)
    acct = await me(http, rig, token)
    assert (acct["balance_msat"], acct["withdrawn_msat"]) == (100_000 - 30_120, 30_120)
    status, again = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11})
    assert (status, again["status"], rig.node.send_counts[h]) == (200, "succeeded", 1)  # asked, not resent
    assert rig.node.local_balance_msat == 100_000 - 30_120
    await clean(http, rig)


async def test_a_crash_after_the_journal_ends_in_one_payment(http, rig: Rig, caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    caplog.set_level(logging.DEBUG)
    _, token = await funded(http, rig, "dave", 50_000)
    rig.node.outcome = "unavailable"  # the send never reaches the node's records
    bolt11, h, _ = make_invoice(20_000)
    status, p = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11})
    assert (status, p["status"]) == (202, "pending"), p
    await rig.stop_vault()  # the crash: journaled, never sent
    assert h not in rig.node.payments
    rig.node.outcome = "succeed"
    await rig.start_vault()  # recovery asks the node (NOT_FOUND) and sends it

    async def done() -> bool:
        return (await me(http, rig, token)).get("withdrawn_msat") == 20_000
    await eventually(done)
    await asyncio.sleep(0.5)  # more check rounds: nothing is sent again
    assert list(rig.node.payments) == [h] and rig.node.payments[h].status == 2  # SUCCEEDED
    assert rig.node.local_balance_msat == 50_000 - 20_000  # paid exactly once
    acct = await me(http, rig, token)
    assert (acct["balance_msat"], acct["payouts_pending_msat"]) == (30_000, 0)
    # The refused send was logged, and the macaroon (a bearer secret) appears in no log line.
    assert "UNAVAILABLE" in caplog.text
    assert rig.wallet.cfg.macaroon_hex.get_secret_value()[-64:] not in caplog.text  # type: ignore[union-attr]
    await clean(http, rig)


async def test_a_crash_after_the_send_is_settled_without_resending(http, rig: Rig) -> None:
    _, token = await funded(http, rig, "erin", 50_000)
    rig.node.outcome, rig.node.drop_then = "drop", "in_flight"  # recorded, then the stream is lost
    bolt11, h, _ = make_invoice(20_000)
    status, p = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11})
    assert (status, p["status"]) == (202, "pending"), p
    await rig.stop_vault()
    rig.node.resolve(h, succeed=True)  # it landed while the vault was down
    rig.node.outcome = "succeed"
    await rig.start_vault()

    async def done() -> bool:
        return (await me(http, rig, token)).get("withdrawn_msat") == 20_000
    await eventually(done)
    assert rig.node.send_counts[h] == 1 and rig.node.local_balance_msat == 30_000
    # Without a restart too: a dropped stream whose payment succeeded is found by the next check.
    rig.node.outcome, rig.node.drop_then = "drop", "succeed"
    bolt11, h2, _ = make_invoice(10_000)
    status, p = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11})
    assert (status, p["status"]) == (202, "pending"), p

    async def second() -> bool:
        return (await me(http, rig, token)).get("withdrawn_msat") == 30_000
    await eventually(second)
    assert rig.node.send_counts[h2] == 1 and rig.node.local_balance_msat == 20_000
    await clean(http, rig)


async def test_in_flight_is_never_released_and_a_failure_releases_once(http, rig: Rig) -> None:
    agent_id, token = await funded(http, rig, "gina", 50_000)
    rig.node.outcome = "in_flight"
    bolt11, h, _ = make_invoice(10_000)
    status, p = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11})
    assert (status, p["status"]) == (202, "pending"), p
    await asyncio.sleep(1.0)  # several check rounds, and the wallet's own wait ends: still in flight, still held
    acct = await me(http, rig, token)
    assert (acct["balance_msat"], acct["payouts_pending_msat"]) == (50_000 - 10_500, 10_500)
    await clean(http, rig)  # the HTLC's lock counts as assets while the payout is a liability
    rig.node.resolve(h, succeed=False)

    async def released() -> bool:
        r = await http.get(f"{rig.stack.url}/v1/vault/me/withdrawals/{h}", headers=bearer(token))
        return (await r.json()).get("status") == "failed"
    await eventually(released)
    await asyncio.sleep(0.5)
    acct = await me(http, rig, token)
    assert (acct["balance_msat"], acct["payouts_pending_msat"], acct["withdrawn_msat"]) == (50_000, 0, 0)
    assert (await kinds(http, rig, agent_id)).count("payout_failed") == 1
    r = await http.get(f"{rig.stack.url}/v1/vault/me/withdrawals/{h}", headers=bearer(token))
    assert (await r.json())["reason"] == "FAILURE_REASON_NO_ROUTE"
    assert rig.node.send_counts[h] == 1 and rig.node.local_balance_msat == 50_000
    await clean(http, rig)


async def test_the_config_builds_an_lnd_wallet(node: LndNode, tmp_path: Path) -> None:
    from actors.vault.wallets import build_wallet
    from actors.vault.wallets.base import Wallet
    from schemas.config import parse_config

    path = tmp_path / "vault.macaroon"
    path.write_bytes(node.vault_macaroon())
    cfg = parse_config({"vault": {"wallet": {"kind": "lnd", "fee_limit_ppm": 1_000, "fee_limit_min_msat": 2_000,
                                             "lnd": {"host": node.host, "tls_cert_path": str(node.cert_path),
                                                     "macaroon_path": str(path)}}}})
    assert cfg.vault is not None
    w = build_wallet(cfg.vault.wallet)
    assert isinstance(w, LndWallet) and isinstance(w, Wallet) and w.rails == ("lightning",)
    await w.start()
    try:
        plan = await w.plan_payout(make_invoice(10_000_000)[0], "lightning")
        assert plan.fee_limit_msat == 10_000  # 1,000 ppm of 10,000,000 msat, above the 2,000 floor
    finally:
        await w.stop()


async def test_a_node_whose_certificate_is_not_the_configured_one_is_refused(node: LndNode, tmp_path: Path
                                                                             ) -> None:
    other = await LndNode(tmp_path / "other").start()  # same host, a different tls.cert
    try:
        cfg = lnd_config(node, tls_cert_path=str(other.cert_path), timeout_s=0.5)
        with pytest.raises(LndError, match="did not answer GetInfo.*UNAVAILABLE"):
            await LndWallet(cfg).start()
        assert sum(node.calls.values()) == 0
        # A node that comes up late is waited for (until the deadline) rather than failing the start at once.
        late = await LndNode(tmp_path / "late").start()
        port = late.port
        await late.stop()
        late.port = port
        w = LndWallet(lnd_config(late, timeout_s=3.0))
        starting = asyncio.create_task(w.start())
        await asyncio.sleep(0.3)
        await late.start()
        await starting
        assert w.identity == "lnd:" + late.pubkey
        await w.stop()
        await late.stop()
    finally:
        await other.stop()
