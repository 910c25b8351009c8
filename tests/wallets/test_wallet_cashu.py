"""The Cashu rail against a real Nutshell mint (FakeWallet): the wallet alone, then inside a vault over HTTP.

One mint serves the session; every test has its own wallet directory, so what a wallet holds is exactly what
the test put there. Amounts: the mint charges 0.1 sat per proof spent (rounded up per request) and FakeWallet
1 sat of Lightning fee against a reserve of 2 sat.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

import aiohttp
import pytest
from cashu.core.base import TokenV4
from cashu.wallet.v1_api import LedgerAPI
from hypothesis import given
from hypothesis import strategies as st

from actors.vault.wallets.base import PayoutPlan, WalletError
from actors.vault.wallets.cashu_coins import (
    Coin,
    blank_outputs,
    exact_subset,
    input_fee_sat,
    select_to_cover,
    split_amount,
    whole_sats,
)
from actors.vault.wallets.cashu_mint import Outputs, parse_token
from actors.vault.wallets.cashu_wallet import CashuWallet
from actors.vault.wallets.simulated import make_invoice
from arbstr.natsserver import NatsServer
from schemas.config import CashuConfig
from tests.support.nutshell import NutshellMint, foreign_token, start_mint, value_after_fee
from tests.support.stack import Stack
from tests.support.vault_helpers import Rig, admin, me, new_agent, payout_outcome, post, reconciled, vault_rig


class Crash(Exception):
    """Stands for the process dying at that point: nothing after it runs."""


WalletFactory = Callable[..., Awaitable[CashuWallet]]


@pytest.fixture
async def wallets(nutshell_mint: NutshellMint, tmp_path: Path) -> AsyncIterator[WalletFactory]:
    """Wallets at the session mint: ``await wallets()`` (started, in a new dir), ``wallets(dir, cls, start=)``."""
    started: list[CashuWallet] = []

    async def make(wallet_dir: Optional[Path] = None, cls: type[CashuWallet] = CashuWallet,
                   start: bool = True) -> CashuWallet:
        w = cls(CashuConfig(mint_url=nutshell_mint.url, wallet_dir=str(wallet_dir or tmp_path / "wallet"),
                            timeout_s=10), poll_interval_s=0.05)
        if start:
            await w.start()
        started.append(w)
        return w

    yield make
    for w in started:
        await w.stop()


async def quote_state(w: CashuWallet, quote_id: str) -> str:
    return str((await LedgerAPI.get_melt_quote(w._wallet, quote_id)).state)


# --- pure arithmetic ---------------------------------------------------------------------------------------
@given(st.lists(st.tuples(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128]), st.sampled_from([0, 100, 1000])),
                max_size=12), st.integers(0, 300))
def test_selection_covers_amount_and_fee_or_nothing_can(coins_raw: list[tuple[int, int]], need: int) -> None:
    coins = [Coin(i, a, ppk) for i, (a, ppk) in enumerate(coins_raw)]
    chosen = select_to_cover(coins, need)
    everything_covers = sum(c.amount for c in coins) >= need + input_fee_sat([c.ppk for c in coins])
    if need == 0:
        assert chosen == []
    elif chosen is None:
        assert not everything_covers  # adding a proof never costs more than it brings (ppk ≤ 1000)
    else:
        assert sum(c.amount for c in chosen) >= need + input_fee_sat([c.ppk for c in chosen])
        assert len({c.index for c in chosen}) == len(chosen)
    exact = exact_subset(coins, need)
    assert exact is None or sum(c.amount for c in exact) == need


@given(st.integers(0, 10_000), st.data())
def test_blank_outputs_can_return_any_overpaid_fee(provided: int, data: st.DataObject) -> None:
    overpaid = data.draw(st.integers(0, provided))
    assert len(split_amount(overpaid)) <= blank_outputs(provided) and sum(split_amount(overpaid)) == overpaid


def test_msat_to_whole_sats() -> None:
    assert whole_sats(21_000) == 21
    for bad in (1_500, 0, -1000, True):
        with pytest.raises(WalletError):
            whole_sats(bad)  # type: ignore[arg-type]


# --- the wallet alone --------------------------------------------------------------------------------------
async def test_token_deposit_is_redeemed_once_and_answered_again_the_same(wallets, outside) -> None:
    w = await wallets()
    assert w.identity.startswith(f"cashu:{w.mint_url}:")
    assert (w.wallet_dir.stat().st_mode & 0o777) == 0o700  # the seed and the proofs live there
    ecash = await outside.mint_token(100)
    got = await w.redeem_token(ecash)
    assert got.amount_msat == value_after_fee(ecash) * 1000 and got.deposit_id.startswith("cashu:")
    assert ecash not in got.reference and await outside.spent(ecash)
    # Posted again (the vault crashed before journaling it): the same answer, nothing swapped twice.
    assert await w.redeem_token(ecash) == got
    v3 = await outside.mint_token(50, legacy=True)
    assert v3.startswith("cashuA")
    got3 = await w.redeem_token(v3)
    assert got3.amount_msat == value_after_fee(v3) * 1000
    assert await w.assets_msat() == got.amount_msat + got3.amount_msat


async def test_spent_foreign_and_malformed_tokens_are_refused(wallets, outside) -> None:
    w = await wallets()
    spent = await outside.mint_token(8)
    assert await outside.redeem(spent) == value_after_fee(spent)
    with pytest.raises(WalletError) as e:
        await w.redeem_token(spent)
    assert (e.value.code, e.value.status) == ("token_spent", 409)
    with pytest.raises(WalletError) as e:
        await w.redeem_token(foreign_token(await outside.mint_token(5)))
    assert e.value.code == "foreign_mint"
    for bad in ("cashuBnotatoken", "hello", "cashuA" + "x" * 40):
        with pytest.raises(WalletError) as e:
            await w.redeem_token(bad)
        assert e.value.code == "invalid_token" and bad not in e.value.message
    with pytest.raises(WalletError) as e:
        await w.create_invoice(1_500, "half a sat", 600)
    assert e.value.code == "invalid_amount"
    assert await w.assets_msat() == 0


async def test_a_redeem_cut_off_after_the_mint_swapped_is_finished_at_start(wallets, outside, tmp_path) -> None:
    class CrashAfterSwap(CashuWallet):
        async def _finish_intent(self, *a: Any, **kw: Any) -> None:
            raise Crash()

    w = await wallets(tmp_path / "w", CrashAfterSwap)
    ecash = await outside.mint_token(64)
    with pytest.raises(Crash):
        await w.redeem_token(ecash)
    assert await outside.spent(ecash) and await w.assets_msat() == 0  # swapped at the mint, not recorded
    await w.stop()
    again = await wallets(tmp_path / "w")  # restart: the open intent's signatures are restored from the mint
    assert await again.assets_msat() == value_after_fee(ecash) * 1000
    got = await again.redeem_token(ecash)  # the agent posts it again: credited, not "spent"
    assert got.amount_msat == value_after_fee(ecash) * 1000
    assert await again.assets_msat() == got.amount_msat


async def test_melt_pays_the_invoice_amount_within_the_fee_limit_once(wallets, outside) -> None:
    w = await wallets()
    held = (await w.redeem_token(await outside.mint_token(200))).amount_msat
    bolt11, payment_hash, _ = make_invoice(50_000)
    plan = await w.plan_payout(bolt11, "cashu")
    assert (plan.rail, plan.payment_hash, plan.amount_msat, plan.destination) == ("cashu", payment_hash, 50_000,
                                                                                  bolt11)
    assert plan.fee_limit_msat >= 2_000  # the mint's Lightning fee reserve at least
    paid = await w.pay(plan)
    assert paid.state == "succeeded" and 0 < paid.fee_msat <= plan.fee_limit_msat, paid
    assert await w.assets_msat() == held - 50_000 - paid.fee_msat  # the change came back
    assert await quote_state(w, plan.reference) == "PAID"
    # Asked again, it answers from the quote's state and never melts twice.
    assert await w.pay(plan) == paid and await w.check_payout(plan) == paid
    assert await w.assets_msat() == held - 50_000 - paid.fee_msat
    with pytest.raises(WalletError) as e:
        await w.plan_payout(bolt11, "lightning")
    assert e.value.code == "rail_unavailable"


async def test_a_melt_cut_off_after_locking_is_sent_once_after_a_restart(wallets, outside, tmp_path) -> None:
    class CrashBeforeMelt(CashuWallet):
        async def _send_melt(self, quote_id: str, inputs: list[Any], outs: Outputs) -> Any:
            raise Crash()

    w = await wallets(tmp_path / "w", CrashBeforeMelt)
    held = (await w.redeem_token(await outside.mint_token(100))).amount_msat
    plan = await w.plan_payout(make_invoice(20_000)[0], "cashu")
    assert (await w.pay(plan)).state == "in_flight"  # inputs locked, the melt never left
    assert (await w.balances())["locked_sat"] > 0 and await w.assets_msat() == held
    await w.stop()
    again = await wallets(tmp_path / "w")
    assert (await again.check_payout(plan)).state == "not_found"  # the mint never saw it: unlocked
    assert (await again.balances())["locked_sat"] == 0
    paid = await again.pay(plan)
    assert paid.state == "succeeded" and paid.fee_msat <= plan.fee_limit_msat
    assert await again.assets_msat() == held - 20_000 - paid.fee_msat


async def test_token_payout_is_issued_once_and_redeemable_elsewhere(wallets, outside, tmp_path) -> None:
    class CrashAfterSwap(CashuWallet):
        async def _finish_intent(self, intent: Any, *a: Any, **kw: Any) -> None:
            if intent.kind == "token":
                raise Crash()
            await super()._finish_intent(intent, *a, **kw)

    w = await wallets(tmp_path / "w", CrashAfterSwap)
    held = (await w.redeem_token(await outside.mint_token(100))).amount_msat
    plan = await w.plan_token_payout("tok:a:1", 21_000)
    assert (plan.rail, plan.reference, plan.destination, plan.amount_msat) == ("cashu", "tok:a:1", "", 21_000)
    with pytest.raises(Crash):
        await w.pay(plan)  # swapped at the mint, then the process died
    await w.stop()
    again = await wallets(tmp_path / "w")  # start finishes the swap: the token is the one it issued
    issued = await again.check_payout(plan)
    assert issued.state == "succeeded" and issued.token.startswith("cashuB")
    assert 0 <= issued.fee_msat <= plan.fee_limit_msat
    assert await again.pay(plan) == issued  # never a second token
    assert await again.assets_msat() == held - 21_000 - issued.fee_msat
    assert TokenV4.deserialize(issued.token).amount == 21
    assert await outside.redeem(issued.token) == value_after_fee(issued.token)
    # A token payout the wallet can hand over as held costs nothing and is remembered the same way.
    second = await again.plan_token_payout("tok:a:2", 4_000)
    paid = await again.pay(second)
    assert paid.state == "succeeded" and await again.check_payout(second) == paid
    assert await again.assets_msat() == held - 21_000 - issued.fee_msat - 4_000 - paid.fee_msat
    with pytest.raises(WalletError):
        await again.plan_token_payout("tok:a:3", 2_500)  # not whole sats


async def test_no_ecash_reaches_the_logs(wallets, outside, caplog) -> None:
    caplog.set_level(logging.DEBUG)  # an operator debugging: still no token, no proof secret
    w = await wallets()
    ecash = await outside.mint_token(30)
    await w.redeem_token(ecash)
    issued = await w.pay(await w.plan_token_payout("tok:log:1", 7_000))
    with pytest.raises(WalletError) as e:
        await w.redeem_token(ecash[:-8] + "AAAAAAAA")
    secrets = [p.secret for t in (ecash, issued.token) for p in parse_token(t).proofs]
    assert caplog.records  # something was logged at all
    for text in [caplog.text, e.value.message, *(str(r.args) for r in caplog.records)]:
        assert ecash not in text and issued.token not in text
        assert not any(s in text for s in secrets)


async def test_invoice_deposit_is_minted_once_and_reported_once_across_restarts(wallets, tmp_path) -> None:
    w = await wallets(tmp_path / "w")
    inv = await w.create_invoice(40_000, "top up", 600)
    assert inv.amount_msat == 40_000 and inv.bolt11.startswith("lnbc")
    seen: list[Any] = []

    async def on_settled(s: Any) -> None:
        seen.append(s)

    task = asyncio.create_task(w.watch_invoices(0, on_settled))
    for _ in range(200):
        if seen:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    assert [(s.payment_hash, s.amount_msat, s.settle_index) for s in seen] == [(inv.payment_hash, 40_000, 1)]
    assert await w.assets_msat() == 40_000
    await w.stop()
    again = await wallets(tmp_path / "w")
    assert await again.collect_deposits() == 0  # the mint would refuse a second mint; we do not ask
    replay: list[Any] = []

    async def on_replay(s: Any) -> None:
        replay.append(s)

    task = asyncio.create_task(again.watch_invoices(0, on_replay))
    for _ in range(250):
        if replay:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # and no second report of it
    task.cancel()
    assert [s.settle_index for s in replay] == [1]  # from the cursor on: the same report, once
    assert await again.assets_msat() == 40_000


async def funded_by_invoice(w: CashuWallet, amount_msat: int) -> None:
    """A deposit quote FakeWallet pays at once, minted into ``w``."""
    await w.create_invoice(amount_msat, "", 600)
    for _ in range(200):
        if await w.collect_deposits():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the deposit quote was not paid")


async def test_a_pending_melt_keeps_its_inputs_until_the_mint_settles_it(tmp_path) -> None:
    pending = {"FAKEWALLET_PAY_INVOICE_STATE": "PENDING", "FAKEWALLET_PAYMENT_STATE": "PENDING"}
    mint = start_mint(tmp_path / "mint", env_overrides=pending)
    cfg = CashuConfig(mint_url=mint.url, wallet_dir=str(tmp_path / "w"), timeout_s=10)
    w: Optional[CashuWallet] = None
    try:
        w = CashuWallet(cfg)
        await w.start()
        await funded_by_invoice(w, 100_000)
        plan = await w.plan_payout(make_invoice(40_000)[0], "cashu")
        assert (await w.pay(plan)).state == "in_flight"
        assert (await w.check_payout(plan)).state == "in_flight"  # pending is never a failure
        assert (await w.balances())["locked_sat"] > 0 and await w.assets_msat() == 100_000
        await w.stop()
        mint = mint.restart()  # the Lightning payment went through while the mint was down
        w = CashuWallet(cfg)
        await w.start()
        paid = await w.check_payout(plan)
        assert paid.state == "succeeded" and 0 <= paid.fee_msat <= plan.fee_limit_msat, paid
        # The change for the unused fee reserve was fetched back from the mint (the melt's answer was lost).
        assert await w.assets_msat() == 100_000 - 40_000 - paid.fee_msat
        assert (await w.balances())["locked_sat"] == 0 and await w.pay(plan) == paid
    finally:
        if w is not None:
            await w.stop()
        mint.stop()


async def test_two_wallets_on_one_directory_take_turns(wallets, outside, tmp_path) -> None:
    a = await wallets(tmp_path / "shared")
    b = await wallets(tmp_path / "shared")
    assert a.identity == b.identity  # one store of value: reconciliation counts it once
    tokens = [await outside.mint_token(n) for n in (40, 24)]
    got = await asyncio.gather(a.redeem_token(tokens[0]), b.redeem_token(tokens[1]))
    held = sum(g.amount_msat for g in got)
    plans = [await a.plan_token_payout("tok:x:1", 9_000), await b.plan_token_payout("tok:x:2", 11_000)]
    paid = await asyncio.gather(a.pay(plans[0]), b.pay(plans[1]))
    assert [p.state for p in paid] == ["succeeded", "succeeded"]
    assert await a.assets_msat() == await b.assets_msat() == held - 20_000 - sum(p.fee_msat for p in paid)
    assert [await outside.redeem(p.token) for p in paid] == [value_after_fee(p.token) for p in paid]


# --- inside a vault, over HTTP -----------------------------------------------------------------------------
@pytest.fixture
async def rig(fresh_nats: NatsServer, mock_upstream: str, wallets: WalletFactory, tmp_path: Path
              ) -> AsyncIterator[Rig]:
    # Payouts are checked only at start here: what a restart recovers is not done by the check loop first.
    wallet_cfg = {"pay_wait_s": 5.0, "check_interval_s": 60.0}

    async def make(stack: Stack) -> Rig:
        return Rig(stack, await wallets(tmp_path / "vault-wallet", start=False))  # the vault starts and stops it

    async with vault_rig(fresh_nats.url, mock_upstream, wallet_cfg, make) as r:
        yield r


async def clean(http: aiohttp.ClientSession, rig: Rig) -> None:
    """Books balanced, and the wallet's proofs are exactly what the agents own (plus nothing)."""
    rec = await reconciled(http, rig.stack, exact=True)
    assert rec["assets_msat"] == await rig.wallet.assets_msat()


async def deposit(http: aiohttp.ClientSession, rig: Rig, token: str, ecash: str) -> tuple[int, Any]:
    return await post(http, rig, "/v1/vault/me/deposits", token, {"rail": "cashu", "token": ecash})


async def test_vault_credits_a_token_once_whoever_posts_it_again(http, rig, outside) -> None:
    _, token = await new_agent(http, rig.stack, "ann")
    ecash = await outside.mint_token(100)
    status, body = await deposit(http, rig, token, ecash)
    credit = value_after_fee(ecash) * 1000
    assert (status, body["status"], body["amount_msat"], body["balance_msat"]) == (201, "credited", credit,
                                                                                   credit), body
    status, body = await deposit(http, rig, token, ecash)  # the same agent again: nothing more
    assert status in (201, 409) and (await me(http, rig, token))["balance_msat"] == credit
    _, thief = await new_agent(http, rig.stack, "bob")
    status, body = await deposit(http, rig, thief, ecash)  # another agent with a copy of it
    assert (status, body["error"]["code"]) == (409, "token_spent")
    spent = await outside.mint_token(10)
    await outside.redeem(spent)
    status, body = await deposit(http, rig, token, spent)
    assert (status, body["error"]["code"]) == (409, "token_spent")
    status, body = await deposit(http, rig, token, foreign_token(await outside.mint_token(3)))
    assert (status, body["error"]["code"]) == (400, "foreign_mint")
    # The wallet swapped a token but the vault died before journaling: the agent posts it again, credited once.
    lost = await outside.mint_token(32)
    await rig.wallet.redeem_token(lost)
    status, body = await deposit(http, rig, token, lost)
    assert (status, body["status"]) == (201, "credited")
    await deposit(http, rig, token, lost)
    assert (await me(http, rig, token))["balance_msat"] == credit + value_after_fee(lost) * 1000
    await clean(http, rig)


async def test_vault_melt_payout_is_charged_the_invoice_plus_its_fee(http, rig, outside) -> None:
    _, token = await new_agent(http, rig.stack, "cid")
    ecash = await outside.mint_token(200)
    _, dep = await deposit(http, rig, token, ecash)
    bolt11, payment_hash, _ = make_invoice(60_000)
    # The melt's outcome, not pay_wait_s's deadline: a loaded machine may answer 202 "pending" first.
    status, p = await payout_outcome(http, rig.stack, token,
                                     *await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11}))
    assert (status, p["status"], p["rail"], p["payout_id"], p["amount_msat"]) == (200, "succeeded", "cashu",
                                                                                  payment_hash, 60_000), p
    assert 0 < p["fee_msat"] <= p["fee_limit_msat"] and p["charged_msat"] == 60_000 + p["fee_msat"]
    assert p["balance_msat"] == dep["amount_msat"] - p["charged_msat"]
    status, again = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11})
    assert (status, again["status"], again["charged_msat"]) == (200, "succeeded", p["charged_msat"])
    assert (await me(http, rig, token))["withdrawn_msat"] == p["charged_msat"]
    await clean(http, rig)


async def test_vault_payout_cut_off_before_the_melt_pays_once_after_restart(http, rig, outside, wallets,
                                                                             tmp_path) -> None:
    class CrashBeforeMelt(CashuWallet):
        async def _send_melt(self, quote_id: str, inputs: list[Any], outs: Outputs) -> Any:
            raise Crash()

    await rig.stop_vault()
    rig.wallet = await wallets(rig.wallet.wallet_dir, CrashBeforeMelt, start=False)
    await rig.start_vault()
    _, token = await new_agent(http, rig.stack, "dee")
    _, dep = await deposit(http, rig, token, await outside.mint_token(100))
    bolt11, payment_hash, _ = make_invoice(30_000)
    status, p = await post(http, rig, "/v1/vault/me/withdrawals", token, {"bolt11": bolt11})
    assert (status, p["status"]) == (202, "pending"), p  # journaled, inputs locked, never sent
    held = p["amount_msat"] + p["fee_limit_msat"]
    assert (await me(http, rig, token))["payouts_pending_msat"] == held
    await rig.stop_vault()
    rig.wallet = await wallets(rig.wallet.wallet_dir, start=False)  # the restarted process: no crash this time
    await rig.start_vault()  # resumes the payout: the mint never saw it, so it is sent now, once

    async def settled() -> dict[str, Any]:
        for _ in range(200):
            acct = await me(http, rig, token)
            if acct and acct["payouts_pending_msat"] == 0:
                return acct
            await asyncio.sleep(0.05)
        raise AssertionError("the payout was not resumed")

    acct = await settled()
    listed = await admin(http, rig.stack, "GET", "/v1/admin/payouts", expect=200)
    done = [x for x in listed["data"] if x["payout_id"] == payment_hash]
    assert len(done) == 1 and done[0]["status"] == "succeeded", done
    assert acct["withdrawn_msat"] == done[0]["charged_msat"] == 30_000 + done[0]["fee_msat"]
    assert await quote_state(rig.wallet, done[0]["reference"]) == "PAID"
    assert acct["balance_msat"] == dep["amount_msat"] - done[0]["charged_msat"]
    await clean(http, rig)


async def test_vault_token_payout_hands_over_one_token_another_wallet_redeems(http, rig, outside) -> None:
    _, token = await new_agent(http, rig.stack, "eve")
    await deposit(http, rig, token, await outside.mint_token(100))
    req = {"rail": "cashu", "amount_msat": 21_000, "payout_id": "cash-out-1"}
    status, p = await payout_outcome(http, rig.stack, token,
                                     *await post(http, rig, "/v1/vault/me/withdrawals", token, req))
    assert (status, p["status"], p["rail"], p["amount_msat"]) == (200, "succeeded", "cashu", 21_000), p
    assert p["token"].startswith("cashuB") and p["charged_msat"] == 21_000 + p["fee_msat"] <= 21_000 + \
        p["fee_limit_msat"]
    status, again = await post(http, rig, "/v1/vault/me/withdrawals", token, req)
    assert (status, again["token"]) == (200, p["token"])
    assert (await me(http, rig, token))["withdrawn_msat"] == p["charged_msat"]
    assert await outside.redeem(p["token"]) == value_after_fee(p["token"])
    await clean(http, rig)
    plan = PayoutPlan("cashu", p["payout_id"], 21_000, p["fee_limit_msat"], p["payout_id"], "")
    assert (await rig.wallet.check_payout(plan)).token == p["token"]


async def test_vault_lightning_deposit_on_a_cashu_only_vault_is_a_mint_quote_credited_once(http, rig) -> None:
    _, token = await new_agent(http, rig.stack, "fay")
    status, inv = await post(http, rig, "/v1/vault/me/deposits", token, {"rail": "lightning", "amount_msat": 30_000})
    assert (status, inv["status"], inv["rail"], inv["amount_msat"]) == (201, "invoice", "lightning", 30_000), inv
    assert inv["bolt11"].startswith("lnbc")  # the mint's invoice: paid, it mints ecash into the vault's wallet
    # The test mint's FakeWallet settles its own invoices: the wallet mints, the vault credits the agent.
    for _ in range(200):
        if (await me(http, rig, token))["balance_msat"] == 30_000:
            break
        await asyncio.sleep(0.05)
    assert (await me(http, rig, token))["balance_msat"] == 30_000
    await asyncio.sleep(2.5)  # more polls of the quote feed report nothing new
    assert (await me(http, rig, token))["balance_msat"] == 30_000
    await clean(http, rig)  # the wallet holds exactly the minted 30 sat the agent owns
