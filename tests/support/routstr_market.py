"""A paid arbstr stack whose vault pays Routstr nodes announced on a real Nostr relay, from a real Nutshell mint:
shared by the provider top-up, routing and X-Cashu tests. The operator account (what top-ups and per-request
tokens are paid from) and one agent are funded with real ecash."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import aiohttp

from actors.pricing.market import node_name
from actors.vault.wallets.cashu_wallet import CashuWallet
from arbstr.natsserver import NatsServer
from schemas import subjects
from schemas.config import CashuConfig
from schemas.vault import ProviderKey
from tests.support.nostr_relay import NostrRelay, Signer, publish_all
from tests.support.nutshell import NutshellMint, OutsideWallet
from tests.support.routstr_node import RoutstrNode
from tests.support.stack import ADMIN_TOKEN, demo_config, start_stack, vault_section
from tests.support.vault_helpers import Rig, admin, bearer, new_agent, reconciled
from tests.support.waiting import eventually


class Market:
    def __init__(self, http: aiohttp.ClientSession, stack: Any, rig: Rig, wallet: CashuWallet, agent: str,
                 relay: NostrRelay, mint: NutshellMint, outside: OutsideWallet) -> None:
        self.http, self.stack, self.rig, self.wallet, self.agent = http, stack, rig, wallet, agent
        self.relay, self.mint, self.outside = relay, mint, outside

    def prepare(self, node: RoutstrNode, d: str = "n1") -> tuple[Signer, str]:
        """The node's Nostr identity and its provider name in arbstr, before anything is published."""
        signer = Signer(f"{d}-{node.url}-{time.time_ns()}")
        return signer, node_name(signer.pubkey, d)

    async def publish(self, signer: Signer, node: RoutstrNode, d: str = "n1",
                      mints: Optional[tuple[str, ...]] = None) -> None:
        await publish_all(self.http, self.relay.url, signer.announcement(
            d, node.url, mints=(self.mint.url,) if mints is None else mints))

    async def announce(self, node: RoutstrNode, d: str = "n1", mints: Optional[tuple[str, ...]] = None) -> str:
        """Publish the node on the relay; its provider name in arbstr."""
        signer, name = self.prepare(node, d)
        await self.publish(signer, node, d, mints)
        return name

    async def seed_key(self, name: str, node: RoutstrNode, sats: int) -> Any:
        """A key arbstr already holds at the node (made earlier, e.g. by an arbstr that used the GET form): made
        here with outside ecash and recorded in arbstr_provider_keys as the vault records its own."""
        token = await self.outside.mint_token(sats)
        async with self.http.get(f"{node.url}/v1/balance/create", params={"initial_balance_token": token}) as r:
            created = await r.json()
            assert r.status == 200, created
        key = node.keys[created["api_key"][3:]]
        record = ProviderKey(provider=name, url=f"{node.url}/v1", api_key=created["api_key"],
                             balance_msat=key.total_balance, credited_msat=key.balance)
        kv = await self.stack.nc.jetstream().key_value(subjects.KV_PROVIDER_KEYS)
        await kv.put(name, record.model_dump_json().encode())
        return key

    async def keyed(self, name: str, node: RoutstrNode) -> bool:
        """The gateway routes to the node with a key (read from what any arbstr shows: its keys, /providers)."""
        return bool(node.keys) and await self.routable(name)

    async def seeded(self, node: RoutstrNode, sats: int, d: str = "n1",
                     mints: Optional[tuple[str, ...]] = None) -> tuple[str, Any]:
        """A node arbstr already holds a key for (made before this run), then announced: isolates what a test is
        about from key creation."""
        signer, name = self.prepare(node, d)
        key = await self.seed_key(name, node, sats)
        await self.publish(signer, node, d, mints)
        await eventually(lambda: self.keyed(name, node), what=f"{name} routable", timeout_s=15.0)
        return name, key

    async def views(self) -> dict[str, Any]:
        async with self.http.get(f"{self.stack.url}/providers") as r:
            return {v["name"]: v for v in (await r.json())["data"]}

    async def routable(self, name: str) -> bool:
        views = await self.views()
        return name in views and views[name]["routable"]

    async def paid_by(self, name: str) -> str:
        """How the price table says the node is paid now ("key", "x_cashu" or "")."""
        entry = await self.rig.actor.topups.entry(name)
        return entry.payment if entry is not None and entry.routable else ""

    async def chat(self, model: str, content: str = "hi", **extra: Any) -> tuple[int, Any, Any]:
        async with self.http.post(f"{self.stack.url}/v1/chat/completions", headers=bearer(self.agent),
                                  json={"model": model, "messages": [{"role": "user", "content": content}],
                                        **extra}) as r:
            text = await r.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = text
            return r.status, body, r.headers

    async def payouts(self) -> list[dict[str, Any]]:
        return (await admin(self.http, self.stack, "GET", "/v1/admin/payouts?agent=operator", expect=200))["data"]

    @property
    def operator_state(self) -> Any:
        return self.rig.actor.book.state("operator")

    async def clean_books(self) -> None:
        """The books balance, and the wallet holds exactly what the books say it should."""
        rec = await reconciled(self.http, self.stack)
        assert not rec["frozen"], rec
        assert rec["assets_msat"] == await self.wallet.assets_msat()


@contextlib.asynccontextmanager
async def market(http: aiohttp.ClientSession, nats: NatsServer, mock_upstream: str, mint: NutshellMint,
                 outside: OutsideWallet, tmp_path: Path, relay: NostrRelay, *, topup: Optional[dict[str, Any]] = None,
                 market_extra: Optional[dict[str, Any]] = None, operator_sat: int = 500,
                 agent_sat: int = 400) -> AsyncIterator[Market]:
    cfg = demo_config(
        mock_upstream,
        market={"nostr": {"relays": [relay.url], "interval_s": 0.2, "timeout_s": 2, "tier": "frontier",
                          "accepted_mints": [mint.url], "allow_private_urls": True}, **(market_extra or {})},
        vault=vault_section(wallet={"pay_wait_s": 5.0, "check_interval_s": 0.5},
                            topup={"interval_s": 0.2, **(topup or {})}))
    stack = await start_stack(cfg, nats.url)
    wallet = CashuWallet(CashuConfig(mint_url=mint.url, wallet_dir=str(tmp_path / "vault-wallet")))
    rig = Rig(stack, wallet)
    await rig.start_vault()
    try:
        async with http.post(f"{stack.url}/v1/admin/agents/operator/deposits", headers=bearer(ADMIN_TOKEN),
                             json={"token": await outside.mint_token(operator_sat)}) as r:
            funded = await r.json()
            assert (r.status, funded["status"]) == (201, "credited"), funded
        _, agent = await new_agent(http, stack, "node-user")
        async with http.post(f"{stack.url}/v1/vault/me/deposits", headers=bearer(agent),
                             json={"rail": "cashu", "token": await outside.mint_token(agent_sat)}) as r:
            assert r.status == 201, await r.text()
        yield Market(http, stack, rig, wallet, agent, relay, mint, outside)
    finally:
        await stack.stop_gateway()
        await rig.stop_vault()
        await stack.stop()
