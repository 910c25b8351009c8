"""Routstr nodes announced on Nostr, end to end: announcements the test signs and publishes to a real local relay
(nostr-relay), each node's ``/v1/models`` read over HTTP, the node's key handed over in ``arbstr_provider_keys``
(as the vault does after a top-up), two routers and the gateway calling the node with that key."""

from __future__ import annotations

import asyncio
import time
from typing import Iterator

import aiohttp
import orjson
import pytest

from actors.pricing.actor import PricingActor
from actors.pricing.market import node_name
from actors.runtime.jetstream import open_bucket
from schemas import subjects
from schemas.router import RouteRequest
from tests.support.market_servers import MarketServer, listing, within
from tests.support.nostr_relay import NostrRelay, Signer, publish_all, running_relay
from tests.support.stack import demo_config, start_stack

MODEL = "gpt-4o-mini"
MINT = "http://mint.test:3338"


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NostrRelay]:
    yield from running_relay(tmp_path_factory, "market-relay")


async def test_an_announced_node_becomes_routable_with_its_prices_and_leaves_when_deleted_or_expired(
        http: aiohttp.ClientSession, nats_url: str, mock_upstream: str, market: MarketServer,
        relay: NostrRelay) -> None:
    signer = Signer(f"market-{time.time_ns()}")  # its own identity: events of other runs never match
    n1, n2, n3 = (node_name(signer.pubkey, d) for d in ("n1", "n2", "n3"))
    market.listings["node1"] = listing({MODEL: (0.001, "0.002"), "node-only": (0.0005, 0.0005)}, context=32_000)
    market.listings["node3"] = listing({MODEL: (0.003, 0.003)})
    cfg = demo_config(mock_upstream, market={"nostr": {
        "relays": [relay.url], "interval_s": 0.2, "timeout_s": 2, "tier": "frontier",
        "accepted_mints": [MINT + "/"], "allow_private_urls": True}})
    stack = await start_stack(cfg, nats_url, routers=2)
    try:
        # The vault owns the keys bucket (only it may create it); this test plays the vault.
        keys = await open_bucket(stack.nc, subjects.KV_PROVIDER_KEYS)
        actor = stack.hosts[0].actor
        assert isinstance(actor, PricingActor)
        assert await actor.wait_for(lambda a: a.settled(), 5)

        def first(router_index: int, model: str = MODEL) -> str:
            reply = stack.routers[router_index].route(RouteRequest(request_id="r", model=model, input_tokens=100))
            return reply.candidates[0].provider

        now = int(time.time())
        await publish_all(http, relay.url,
                          signer.announcement("n1", f"{market.url}/node1", mints=(MINT,), created_at=now - 2),
                          signer.announcement("n2", f"{market.url}/node2", mints=("https://other.mint",)),
                          signer.announcement("n3", f"{market.url}/node3", mints=(MINT,), expiration=now + 3))
        await within(2.0, lambda: all(n in r.prices for r in stack.routers for n in (n1, n2, n3)))
        node = stack.routers[0].prices[n1]
        assert (node.kind, node.url, node.tier, node.mints) == ("routstr", f"{market.url}/node1/v1", "frontier",
                                                                [MINT])
        assert node.models == [MODEL, "node-only"] and node.context_length == 32_000
        assert node.rates_for(MODEL).input_rate == 1000 and node.rates_for(MODEL).output_rate == 2000
        assert not node.routable and node.reasons == [
            "no credential: nothing pays this node ([vault.topup] is not configured, no key in "
            "arbstr_provider_keys)"]
        assert stack.routers[0].prices[n2].reasons[0].startswith("no payment possible: the node takes "
                                                                 "https://other.mint")
        assert first(0) == first(1) == "alpha"  # listed, never chosen

        # The vault tops the node up and leaves its key: routable on every router within a second.
        await keys.put(n1, orjson.dumps({"api_key": "sk-node-one"}))
        took = await within(1.0, lambda: first(0) == first(1) == n1)
        await within(1.0, lambda: stack.gateway.directory.get(n1) is not None)
        async with http.post(f"{stack.url}/v1/chat/completions",
                             json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                   "max_tokens": 5}) as r:
            assert r.status == 200 and r.headers["x-arbstr-provider"] == n1
            assert r.headers["x-arbstr-cost-msat"] == "7"  # ceil((5·1000 + 1·2000)·1000 / 1e6)
        assert ("/node1/v1/chat/completions", {"Authorization": "Bearer sk-node-one"}) in market.requests
        async with http.get(f"{stack.url}/providers") as r:
            views = {v["name"]: v for v in (await r.json())["data"]}
        assert views[n1]["routable"] and views[n1]["source"] == "nostr+discovery"
        assert not views[n3]["routable"] and "no credential" in views[n3]["reasons"][0]
        assert "sk-node-one" not in str(views)

        # A deletion removes n1; n3's expiration removes it without any new event.
        await publish_all(http, relay.url, signer.deletion(d_tags=("n1",)))
        await within(2.0, lambda: all(n1 not in r.prices for r in stack.routers))
        assert first(0) == first(1) == "alpha"
        await within(4.0, lambda: all(n3 not in r.prices for r in stack.routers))
        assert n2 in stack.routers[0].prices
    finally:
        try:  # the bucket outlives this stack on the shared server
            await (await stack.nc.jetstream().key_value(subjects.KV_PROVIDER_KEYS)).delete(n1)
        finally:
            await stack.stop()
    print(f"key in arbstr_provider_keys → both routers route to the node: {took * 1000:.0f} ms")


async def test_only_trusted_authors_announce_and_local_relays_allow_local_nodes_by_default(
        http: aiohttp.ClientSession, nats_url: str, mock_upstream: str, market: MarketServer,
        relay: NostrRelay) -> None:
    trusted, stranger = Signer(f"trusted-{time.time_ns()}"), Signer(f"stranger-{time.time_ns()}")
    market.listings["t"] = listing({MODEL: (0.001, 0.001)})
    market.listings["s"] = listing({MODEL: (0.001, 0.001)})
    # No allow_private_urls: the relay is on loopback, so nodes on loopback may be read (a local test net).
    cfg = demo_config(mock_upstream, market={"nostr": {
        "relays": [relay.url], "interval_s": 0.2, "timeout_s": 2, "accepted_mints": [MINT],
        "authors": [trusted.pubkey]}})
    assert cfg.market.nostr is not None and cfg.market.nostr.allow_private_urls is None
    stack = await start_stack(cfg, nats_url)
    try:
        await publish_all(http, relay.url, trusted.announcement("t", f"{market.url}/t", mints=(MINT,)),
                          stranger.announcement("s", f"{market.url}/s", mints=(MINT,)))
        mine_, theirs = node_name(trusted.pubkey, "t"), node_name(stranger.pubkey, "s")
        await within(3.0, lambda: mine_ in stack.routers[0].prices
                     and stack.routers[0].prices[mine_].models == [MODEL])
        await asyncio.sleep(0.5)
        assert theirs not in stack.routers[0].prices
    finally:
        await stack.stop()


def test_nostr_defaults_follow_the_vault_and_the_relays() -> None:
    from schemas.config import ConfigError, parse_config

    cfg = parse_config({"market": {"nostr": {"relays": ["wss://relay.example"]}},
                        "vault": {"wallet": {"kind": "cashu", "cashu": {"mint_url": "https://mint.example/"}}}})
    assert cfg.market.nostr is not None and cfg.market.nostr.accepted_mints == ["https://mint.example"]
    with pytest.raises(ConfigError, match="64-hex-digit"):
        parse_config({"market": {"nostr": {"relays": ["wss://r.example"], "authors": ["npub1xyz"]}}})
