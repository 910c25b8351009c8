"""The rails under races and crashes across vault instances: a token is credited to one agent only, a payout is
sent by one instance at a time (its lease), a forced clear accepts the shortfall it was forced over."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import pytest

from actors.runtime.host import ActorHost
from actors.vault.actor import VaultActor
from actors.vault.wallets.base import PaymentStatus, PayoutPlan, Redeemed
from actors.vault.wallets.simulated import SimulatedWallet, make_invoice
from arbstr.natsserver import NatsServer
from tests.support.stack import ADMIN_TOKEN, demo_config, start_stack, vault_section
from tests.vault.test_vault_rails import Rig, bearer, clean, funded_by_invoice, me, post
from tests.support.vault_helpers import admin, assert_balanced, books, new_agent, payout_outcome


class IdempotentWallet(SimulatedWallet):
    """Like the Cashu wallet: a token it already took is answered again (not refused), and it can 'crash' after
    the swap, before the vault journals; and a payment takes a while, with concurrent sends counted."""

    def __init__(self) -> None:
        super().__init__(fee_limit_ppm=0, fee_limit_min_msat=500)
        self.taken: dict[str, Redeemed] = {}
        self.crash_after_swap = False
        self.pay_delay_s = 0.0
        self.sending = 0
        self.most_at_once = 0

    async def redeem_token(self, token: str) -> Redeemed:
        if token in self.taken:
            return self.taken[token]
        r = await super().redeem_token(token)
        self.taken[token] = r
        if self.crash_after_swap:
            self.crash_after_swap = False
            raise ConnectionError("the vault died right after the swap")
        return r

    async def pay(self, plan: PayoutPlan) -> PaymentStatus:
        self.sending += 1
        self.most_at_once = max(self.most_at_once, self.sending)
        try:
            await asyncio.sleep(self.pay_delay_s)
            return await super().pay(plan)
        finally:
            self.sending -= 1

    async def check_payout(self, plan: PayoutPlan) -> PaymentStatus:
        if self.sending:
            return PaymentStatus("not_found")  # the rail has not recorded the send yet: the dangerous window
        return await super().check_payout(plan)


@pytest.fixture
async def rig(fresh_nats: NatsServer, mock_upstream: str) -> AsyncIterator[Rig]:
    wallet = {"pay_wait_s": 5.0, "check_interval_s": 0.05, "fee_limit_min_msat": 500, "fee_limit_ppm": 0}
    stack = await start_stack(demo_config(mock_upstream, vault=vault_section(wallet=wallet)), fresh_nats.url)
    r = Rig(stack, IdempotentWallet())
    await r.start_vault()
    yield r
    if r.host is not None:
        await r.stop_vault()
    await stack.stop()


async def second_instance(rig: Rig) -> ActorHost:
    import nats
    nc = await nats.connect(rig.stack.nc.connected_url.geturl())  # type: ignore[union-attr]
    host = ActorHost(VaultActor(rig.stack.config, wallet=rig.wallet), nc)  # the same wallet: one node, one mint
    await host.start()
    rig.stack.extra_connections.append(nc)
    return host


async def test_one_token_posted_by_two_agents_at_once_is_credited_once(http, rig) -> None:
    _, a = await new_agent(http, rig.stack, "ada")
    _, b = await new_agent(http, rig.stack, "bob")
    token = rig.wallet.mint_token(7_000)
    results = await asyncio.gather(*(post(http, rig, "/v1/vault/me/deposits", t, {"rail": "cashu", "token": token})
                                     for t in (a, b)))
    assert sorted(s for s, _ in results) == [201, 409], results
    assert [body["error"]["code"] for s, body in results if s == 409] == ["token_spent"]
    assert (await books(http, rig.stack))["deposits_msat"] == 7_000
    await clean(http, rig)


async def test_a_token_swapped_before_a_crash_is_credited_to_its_first_poster_only(http, rig) -> None:
    _, a = await new_agent(http, rig.stack, "cora")
    _, b = await new_agent(http, rig.stack, "dirk")
    token = rig.wallet.mint_token(9_000)
    rig.wallet.crash_after_swap = True
    status, _ = await post(http, rig, "/v1/vault/me/deposits", a, {"rail": "cashu", "token": token})
    assert status >= 500  # the wallet has the ecash; the journal does not know yet
    # The payer still holds the token string: posting it to another account gets nothing ...
    status, body = await post(http, rig, "/v1/vault/me/deposits", b, {"rail": "cashu", "token": token})
    assert (status, body["error"]["code"]) == (409, "token_spent")
    # ... while the first poster's retry is credited, once.
    status, body = await post(http, rig, "/v1/vault/me/deposits", a, {"rail": "cashu", "token": token})
    assert (status, body["amount_msat"]) == (201, 9_000), body
    status, body = await post(http, rig, "/v1/vault/me/deposits", a, {"rail": "cashu", "token": token})
    assert (status, body["error"]["code"]) == (409, "token_spent")
    assert ((await me(http, rig, a))["balance_msat"], (await me(http, rig, b))["balance_msat"]) == (9_000, 0)
    await clean(http, rig)


async def test_two_instances_never_send_one_payout_at_once(http, rig) -> None:
    other = await second_instance(rig)
    try:
        _, token = await funded_by_invoice(http, rig, "erik", 100_000)
        rig.wallet.pay_delay_s = 1.0  # both instances' check loops (every 50 ms) see it "not found" meanwhile
        bolt11, payment_hash, _ = make_invoice(10_000)
        status, p = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11})
        # The outcome this test is about is one payment sent, whenever it lands: under load the 1 s rail can
        # outlast the answer's wait (202 "pending"), so the payout is followed to its end, not to a deadline.
        status, p = await payout_outcome(http, rig.stack, token, status, p)
        assert (status, p["status"], p["payout_id"]) == (200, "succeeded", payment_hash), p
        await asyncio.sleep(0.5)  # ten more check rounds of both instances: nothing is sent again
        assert (rig.wallet.most_at_once, rig.wallet.pay_calls) == (1, 1)
        assert (await me(http, rig, token))["withdrawn_msat"] == 10_000
        await clean(http, rig)
    finally:
        await other.stop()


async def test_a_forced_clear_accepts_that_shortfall_and_only_a_larger_one_closes_again(http, rig) -> None:
    await funded_by_invoice(http, rig, "fay", 10_000)
    rig.wallet.balance_msat -= 300
    assert (await admin(http, rig.stack, "GET", "/v1/admin/reconcile", expect=200))["frozen"] is True
    r = await http.post(f"{rig.stack.url}/v1/admin/reconcile/clear", headers=bearer(ADMIN_TOKEN),
                        json={"force": True})
    assert (r.status, (await r.json())["frozen"]) == (200, False)
    rec = await admin(http, rig.stack, "GET", "/v1/admin/reconcile", expect=200)
    assert (rec["ok"], rec["frozen"], rec["surplus_msat"]) == (False, False, -300)  # reported, tolerated
    rig.wallet.balance_msat -= 1
    assert (await admin(http, rig.stack, "GET", "/v1/admin/reconcile", expect=200))["frozen"] is True
    rig.wallet.balance_msat += 301
    r = await http.post(f"{rig.stack.url}/v1/admin/reconcile/clear", headers=bearer(ADMIN_TOKEN))
    assert (r.status, (await r.json())["ok"]) == (200, True)
    assert_balanced(await books(http, rig.stack))


async def test_an_idempotency_key_that_is_not_a_name_is_a_400(http, rig) -> None:
    _, token = await funded_by_invoice(http, rig, "gus", 10_000)
    r = await http.post(f"{rig.stack.url}/v1/vault/me/withdrawals", json={"rail": "cashu", "amount_msat": 5},
                        headers={**bearer(token), "Idempotency-Key": "has spaces/and slashes"})
    body: Any = await r.json()
    assert (r.status, body["error"]["param"]) == (400, "Idempotency-Key")


async def test_a_payout_is_left_to_an_instance_on_the_wallet_that_started_it(http, rig) -> None:
    _, token = await funded_by_invoice(http, rig, "hugo", 50_000)
    rig.wallet.outcome = "pending"
    status, p = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": make_invoice(5_000)[0]})
    assert (status, p["status"]) == (202, "pending")
    await rig.stop_vault()
    # Another instance on another wallet (another node): asking its own rail would read "never sent" and pay.
    stranger = IdempotentWallet()
    stranger.identity = "another-node"
    original, rig.wallet = rig.wallet, stranger
    await rig.start_vault()
    await asyncio.sleep(0.5)  # ten check rounds
    assert stranger.pay_calls == 0
    await rig.stop_vault()
    rig.wallet = original
    original.resolve(p["reference"], succeed=True)
    await rig.start_vault()
    assert await withdrawn_within(http, rig, token, 5_000, 5.0) == 5_000
    await clean(http, rig)


async def withdrawn_within(http: Any, rig: Rig, token: str, expected: int, seconds: float) -> int:
    """The agent's withdrawn_msat once it reads ``expected``, or what it reads after ``seconds``."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if (await me(http, rig, token)).get("withdrawn_msat") == expected:
            break
        await asyncio.sleep(0.05)
    return int((await me(http, rig, token)).get("withdrawn_msat", -1))


async def test_a_vault_stopped_while_taking_a_payouts_lease_lets_the_lease_go(http, rig, monkeypatch) -> None:
    from actors.vault.payout_driver import LEASE_TTL_S

    _, token = await funded_by_invoice(http, rig, "hal", 50_000)
    rig.wallet.outcome = "pending"
    status, p = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": make_invoice(6_000)[0]})
    assert (status, p["status"]) == (202, "pending")
    # The next check round's lease create reaches the server, and the vault stops before its answer arrives.
    kv = rig.actor.rails.claims.kv
    real_create, landed = kv.create, asyncio.Event()

    async def create_then_stall(key: str, value: bytes, **kwargs: Any) -> int:
        revision = await real_create(key, value, **kwargs)
        if key.startswith("lease."):
            landed.set()
            await asyncio.Event().wait()
        return revision
    monkeypatch.setattr(kv, "create", create_then_stall)
    await asyncio.wait_for(landed.wait(), 5)
    await rig.stop_vault()
    rig.wallet.resolve(p["reference"], succeed=True)
    await rig.start_vault()
    # Well inside the lease's TTL: the lease taken as the vault stopped was let go, not left to lapse.
    assert await withdrawn_within(http, rig, token, 6_000, LEASE_TTL_S / 3) == 6_000
    await clean(http, rig)


async def test_a_deposit_the_journal_keeps_refusing_is_parked_not_blocking_nor_lost(http, rig, monkeypatch) -> None:
    import actors.vault.rail_deposits as deposits_module
    import actors.vault.rails as rails_module
    from schemas.errors import ArbstrError

    monkeypatch.setattr(deposits_module, "CREDIT_ATTEMPTS", 2)
    monkeypatch.setattr(rails_module, "PARKED_SCAN_S", 0.1)
    rails = rig.actor.rails
    real, refusals = rails.credit_invoice, {"left": 4}

    async def flaky(settled: Any) -> None:
        if refusals["left"] > 0:
            refusals["left"] -= 1
            raise ArbstrError(503, "this account's journal is frozen", code="ledger_corrupt")
        await real(settled)
    monkeypatch.setattr(rails, "credit_invoice", flaky)
    _, a = await new_agent(http, rig.stack, "ida")
    _, b = await new_agent(http, rig.stack, "jon")
    status, inv_a = await post(http, rig, "/v1/vault/me/deposits", a, {"rail": "lightning", "amount_msat": 3_000})
    status, inv_b = await post(http, rig, "/v1/vault/me/deposits", b, {"rail": "lightning", "amount_msat": 4_000})
    rig.wallet.settle_invoice(inv_a["payment_hash"])  # refused twice, then parked
    rig.wallet.settle_invoice(inv_b["payment_hash"])  # not held up behind it
    for _ in range(200):
        if (await me(http, rig, a)).get("balance_msat") == 3_000 and (await me(http, rig, b)).get(
                "balance_msat") == 4_000:
            break
        await asyncio.sleep(0.05)
    assert ((await me(http, rig, a))["balance_msat"], (await me(http, rig, b))["balance_msat"]) == (3_000, 4_000)
    assert await rails.claims.parked() == []
    await clean(http, rig)


async def test_a_lease_renewal_racing_its_release_never_revives_it(fresh_nats) -> None:  # type: ignore[no-untyped-def]
    import nats

    from actors.vault.claims import Claims

    nc = await nats.connect(fresh_nats.url)
    try:
        mine, theirs = Claims("mine"), Claims("theirs")
        await mine.start(nc, 1)
        await theirs.start(nc, 1)
        assert await mine.acquire("payout:p1", 15)
        assert not await theirs.acquire("payout:p1", 15)  # held by a live instance
        assert await mine.renew("payout:p1", 15)
        assert not await theirs.renew("payout:p1", 15)  # renewing is for the holder only
        await mine.release("payout:p1")
        assert not await mine.renew("payout:p1", 15)  # late: the lease stays released
        assert await theirs.acquire("payout:p1", 15)  # so another instance may drive the payout at once
    finally:
        await nc.drain()
