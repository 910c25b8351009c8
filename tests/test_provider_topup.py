"""Paying providers in sats, end to end with real parts: a Routstr-like node announced on a real Nostr relay, a
real Nutshell mint, the vault's Cashu wallet. The vault buys the node's prepaid key with a token paid out of
the operator account (journaled like any payout), the gateway routes to the node with that key, and when the
node's balance runs low the vault tops it up again. Books balance and the wallet holds what the books say."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import aiohttp
import pytest

from actors.pricing.market import node_name
from actors.vault.wallets.cashu_wallet import CashuWallet
from arbstr.natsserver import NatsServer
from schemas.config import CashuConfig
from tests.nostr_relay import NostrRelay, Signer, publish_all, running_relay
from tests.nutshell import NutshellMint, OutsideWallet, nutshell_mint, outside  # noqa: F401 (fixtures)
from tests.routstr_node import StartNode, routstr_nodes  # noqa: F401 (fixture)
from tests.stack import ADMIN_TOKEN, demo_config, start_stack, vault_section
from tests.test_vault_rails import Rig, bearer
from tests.vault_helpers import admin, new_agent, reconciled

MODEL = "node-llama"  # served by the node only, so routing there does not depend on relative prices
TOPUP_MSAT = 100_000
MIN_MSAT = 40_000  # above the dearest request (~30 sat): a node never answers 402 between top-ups


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NostrRelay]:
    yield from running_relay(tmp_path_factory, "topup-relay")


async def eventually(check: Callable[[], Any], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


class Market:
    """A stack whose vault pays Nostr-announced nodes from a real mint; the operator and one agent funded."""

    def __init__(self, stack: Any, rig: Rig, wallet: CashuWallet, agent: str) -> None:
        self.stack, self.rig, self.wallet, self.agent = stack, rig, wallet, agent


@contextlib.asynccontextmanager
async def market(http: aiohttp.ClientSession, fresh_nats: NatsServer, mock_upstream: str, nutshell_mint: NutshellMint,
                 outside: OutsideWallet, tmp_path: Path, relay: NostrRelay) -> AsyncIterator[Market]:
    cfg = demo_config(
        mock_upstream,
        market={"nostr": {"relays": [relay.url], "interval_s": 0.2, "timeout_s": 2, "tier": "frontier",
                          "accepted_mints": [nutshell_mint.url], "allow_private_urls": True}},
        vault=vault_section(wallet={"pay_wait_s": 5.0, "check_interval_s": 0.5},
                            topup={"interval_s": 0.2, "amount_msat": TOPUP_MSAT, "min_balance_msat": MIN_MSAT}))
    stack = await start_stack(cfg, fresh_nats.url)
    wallet = CashuWallet(CashuConfig(mint_url=nutshell_mint.url, wallet_dir=str(tmp_path / "vault-wallet")))
    rig = Rig(stack, wallet)  # type: ignore[arg-type]
    await rig.start_vault()
    try:
        # The operator funds the account top-ups are paid from, with real ecash; an agent funds itself.
        status, funded = await _post(http, stack.url, "/v1/admin/agents/operator/deposits", ADMIN_TOKEN,
                                     {"token": await outside.mint_token(500)})
        assert (status, funded["status"]) == (201, "credited"), funded
        _, agent = await new_agent(http, stack, "node-user")
        status, dep = await _post(http, stack.url, "/v1/vault/me/deposits", agent,
                                  {"rail": "cashu", "token": await outside.mint_token(400)})
        assert status == 201, dep
        yield Market(stack, rig, wallet, agent)
    finally:
        await rig.stop_vault()
        await stack.stop()


async def routable(http: aiohttp.ClientSession, stack: Any, name: str) -> bool:
    async with http.get(f"{stack.url}/providers") as r:
        views = {v["name"]: v for v in (await r.json())["data"]}
    return name in views and views[name]["routable"]


async def clean_books(http: aiohttp.ClientSession, m: Market) -> None:
    """The books balance, and the wallet holds exactly what the books say it should."""
    rec = await reconciled(http, m.stack)
    assert not rec["frozen"], rec
    assert rec["assets_msat"] == await m.wallet.assets_msat()


async def test_a_nostr_node_is_paid_from_the_cashu_rail_and_topped_up_as_agents_spend(
        http: aiohttp.ClientSession, fresh_nats: NatsServer, mock_upstream: str, relay: NostrRelay,
        nutshell_mint: NutshellMint, outside: OutsideWallet, routstr_nodes: StartNode, tmp_path: Path) -> None:
    node = await routstr_nodes(prices={MODEL: ("2", "5")})  # sats per token: ~30 sat a request below
    signer = Signer(f"topup-{time.time_ns()}")
    name = node_name(signer.pubkey, "n1")
    async with market(http, fresh_nats, mock_upstream, nutshell_mint, outside, tmp_path, relay) as m:
        stack, agent = m.stack, m.agent
        # Announced on Nostr: listed, then paid and routable without anyone touching a key.
        await publish_all(http, relay.url, signer.announcement("n1", node.url, mints=(nutshell_mint.url,)))
        await eventually(lambda: routable(http, stack, name))
        [key] = node.keys.values()
        assert key.balance_msat > 0

        # Agents' requests go to the node with the key the vault bought; each costs ~30 sat there.
        served = 0
        for _ in range(4):
            async with http.post(f"{stack.url}/v1/chat/completions", headers=bearer(agent),
                                 json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                       "max_tokens": 5}) as r:
                body = await r.json()
                assert r.status == 200, body
                assert r.headers["x-arbstr-provider"] == name
                served += 1
            # The next request waits for the vault to see the low balance and top up again.
            async def funded_again() -> bool:
                return key.balance_msat >= MIN_MSAT
            await eventually(funded_again)
        assert key.total_requests == served

        # Every top-up is an operator payout on the Cashu rail, journaled and settled once.
        payouts = (await admin(http, stack, "GET", "/v1/admin/payouts?agent=operator", expect=200))["data"]
        topups = sorted(p["payout_id"] for p in payouts)
        assert len(topups) >= 2 and all(p["rail"] == "cashu" and p["status"] == "succeeded" for p in payouts)
        assert topups[0] == f"tok:operator:topup-{name}-1"
        assert all(p["amount_msat"] == TOPUP_MSAT for p in payouts)
        assert "cashuA" not in str(payouts) and "cashuB" not in str(payouts)  # the operator's list never carries the ecash itself

        await clean_books(http, m)


async def test_a_key_whose_record_was_not_saved_is_recovered_by_delivering_the_same_token_again(
        http: aiohttp.ClientSession, fresh_nats: NatsServer, mock_upstream: str, relay: NostrRelay,
        nutshell_mint: NutshellMint, outside: OutsideWallet, routstr_nodes: StartNode, tmp_path: Path) -> None:
    """The node made a key for our token, but its record never reached arbstr_provider_keys (KV down, or the
    vault died in between): the next round delivers the same token again, the node answers with the same key
    (Routstr names a key by its token), and no second top-up is paid for the one that looked lost."""
    node = await routstr_nodes(prices={MODEL: ("2", "5")})
    signer = Signer(f"topup-lost-{time.time_ns()}")
    name = node_name(signer.pubkey, "n1")
    async with market(http, fresh_nats, mock_upstream, nutshell_mint, outside, tmp_path, relay) as m:
        topups = m.rig.actor.topups
        save = topups._save
        failed: list[str] = []

        async def save_fails_once_after_create(key: Any, revision: Any) -> int:
            if key.delivered and not failed:
                failed.append(key.delivered[-1])
                raise RuntimeError("the KV write was lost")
            return await save(key, revision)
        topups._save = save_fails_once_after_create
        await publish_all(http, relay.url, signer.announcement("n1", node.url, mints=(nutshell_mint.url,)))
        await eventually(lambda: routable(http, m.stack, name))
        assert failed == [f"tok:operator:topup-{name}-1"]
        [key] = node.keys.values()  # one key at the node, funded once
        assert 0 < key.balance_msat <= TOPUP_MSAT
        payouts = (await admin(http, m.stack, "GET", "/v1/admin/payouts?agent=operator", expect=200))["data"]
        assert [p["payout_id"] for p in payouts] == failed  # nothing paid twice
        async with http.post(f"{m.stack.url}/v1/chat/completions", headers=bearer(m.agent),
                             json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                   "max_tokens": 5}) as r:
            assert r.status == 200, await r.text()
            assert r.headers["x-arbstr-provider"] == name
        assert key.total_requests == 1  # served with the recovered key
        await clean_books(http, m)


async def _post(http: aiohttp.ClientSession, url: str, path: str, token: str, body: dict[str, Any]
                ) -> tuple[int, Any]:
    async with http.post(f"{url}{path}", json=body, headers=bearer(token)) as r:
        return r.status, await r.json()
