"""The live market end to end: a real quote feed and real ``/models`` listings over HTTP (tests/support/market_servers.py),
the pricing actor publishing to the real ``arbstr_prices`` bucket, two router instances watching it, the gateway
calling the mock upstream — and ``/providers``, the confirm endpoint and ``arbstr providers`` on top."""

from __future__ import annotations

import asyncio
import argparse
import contextlib
import io
import time
from typing import Any, AsyncIterator

import aiohttp
import pytest

from actors.pricing.actor import PricingActor
from actors.router.actor import RouterActor
from actors.runtime.host import ActorHost
from arbstr import providers_cli
from arbstr.mock_upstream.wire import auth_fingerprint
from schemas import subjects
from schemas.config import Config
from schemas.router import RouteRequest
from tests.support.market_servers import MarketServer, listing, quote, within
from tests.support.stack import Stack, demo_config, start_stack

MODEL = "gpt-4o-mini"
ADMIN = "market-admin-token-0123456789"


def config(mock_upstream: str, market: MarketServer, **extra: Any) -> Config:
    """alpha, beta, gamma at 8,000 / 10,000 / 12,000 sats per 1M, one feed polled every 0.1 s."""
    feed = {"url": market.url, "name": "seed", "interval_s": 0.1, "max_age_s": 60, **extra.pop("feed", {})}
    return demo_config(mock_upstream, market={"feeds": [feed], **extra})


@contextlib.asynccontextmanager
async def running(cfg: Config, nats_url: str) -> AsyncIterator[Stack]:
    stack = await start_stack(cfg, nats_url, routers=2)
    try:
        yield stack
    finally:
        await stack.stop()


async def _host(stack: Stack, actor: PricingActor) -> None:
    host = ActorHost(actor, stack.nc)
    await host.start()
    stack.hosts.append(host)


def pricing(stack: Stack) -> PricingActor:
    actor = stack.hosts[0].actor
    assert isinstance(actor, PricingActor)
    return actor


def first(router: RouterActor, model: str = MODEL) -> str:
    return router.route(RouteRequest(request_id="r", model=model, input_tokens=100)).candidates[0].provider


async def chat(http: aiohttp.ClientSession, stack: Stack) -> aiohttp.ClientResponse:
    r = await http.post(f"{stack.url}/v1/chat/completions",
                        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
    await r.read()
    return r


async def providers(http: aiohttp.ClientSession, stack: Stack) -> dict[str, dict[str, Any]]:
    async with http.get(f"{stack.url}/providers") as r:
        assert r.status == 200
        return {p["name"]: p for p in (await r.json())["data"]}


async def test_a_feed_update_reroutes_every_router_within_a_second_and_a_stale_one_is_dropped(
        http: aiohttp.ClientSession, nats_url: str, mock_upstream: str, market: MarketServer) -> None:
    async with running(config(mock_upstream, market), nats_url) as stack:
        assert await pricing(stack).wait_for(lambda a: a.settled(), 2)
        assert [first(r) for r in stack.routers] == ["alpha", "alpha"]

        market.quotes = [quote("gamma-co", f"{mock_upstream}/gamma/v1", MODEL, 5000, 5000)]
        took = await within(1.0, lambda: all(first(r) == "gamma" for r in stack.routers))
        r = await chat(http, stack)
        assert r.status == 200 and r.headers["x-arbstr-provider"] == "gamma"
        gamma = (await providers(http, stack))["gamma"]
        assert gamma["source"] == "config+feed:seed" and gamma["model_rates"][MODEL]["input_rate"] == 5000
        assert gamma["routable"] and gamma["sources"][1]["observed_at_ms"] > 0
        assert market.requests[-1][0].startswith("/api/quotes?limit=2000")

        # The feed now says its quote was observed two minutes ago (max_age_s = 60): dropped.
        market.quotes = [quote("gamma-co", f"{mock_upstream}/gamma/v1", MODEL, 5000, 5000,
                               observed_at=time.time() - 120)]
        await within(1.0, lambda: all(first(r) == "alpha" for r in stack.routers))
        gamma = (await providers(http, stack))["gamma"]
        assert gamma["source"] == "config" and gamma["routable"]
        assert gamma["notes"][0].startswith("stale quotes: the newest was observed at ")
        assert gamma["notes"][0].endswith("(max_age_s 60)")
        # Polls and ticks that change nothing write nothing: routers are not woken up every second.
        revision = stack.routers[0].revisions[subjects.KV_PRICES]
        await asyncio.sleep(1.3)
        assert stack.routers[0].revisions[subjects.KV_PRICES] == revision
    print(f"feed update → both routers: {took * 1000:.0f} ms")


async def test_a_feed_that_goes_down_ages_out(nats_url: str, mock_upstream: str, market: MarketServer) -> None:
    async with running(config(mock_upstream, market, feed={"max_age_s": 3}), nats_url) as stack:
        # Observed now, once the stack is up: its start on a slow machine does not eat into the quotes' age.
        market.quotes = [quote("beta-co", f"{mock_upstream}/beta/v1", MODEL, 6000, 6000)]
        await within(2.5, lambda: all(first(r) == "beta" for r in stack.routers))
        market.feed_status = 503  # its last quotes stay until they are older than max_age_s
        await asyncio.sleep(0.3)
        assert all(first(r) == "beta" for r in stack.routers)
        await within(5.0, lambda: all(first(r) == "alpha" for r in stack.routers))


async def test_a_new_endpoint_is_routable_only_with_a_credential(
        http: aiohttp.ClientSession, nats_url: str, mock_upstream: str, market: MarketServer) -> None:
    market.quotes = [quote("Delta Inc", f"{mock_upstream}/delta/v1", MODEL, 2000, 3000),
                     quote("echo", f"{mock_upstream}/echo", MODEL, 500, 500),
                     quote("echo", f"{mock_upstream}/echo", "gpt-4o", 500, 500)]
    cfg = config(mock_upstream, market,
                 credentials=[{"url": f"{mock_upstream}/delta/v1", "api_key": "sk-delta-secret", "name": "delta"}])
    async with running(cfg, nats_url) as stack:
        await within(1.0, lambda: all(first(r) == "delta" for r in stack.routers))
        await within(1.0, lambda: stack.gateway.directory.get("delta") is not None)
        r = await chat(http, stack)
        assert r.status == 200 and r.headers["x-arbstr-provider"] == "delta"
        async with http.get(f"{mock_upstream}/_mock/delta/stats") as s:
            assert (await s.json())["last_auth"]["sha256_prefix"] == auth_fingerprint("sk-delta-secret")

        views = await providers(http, stack)
        echo = views["echo"]
        assert not echo["routable"] and echo["kind"] == "feed" and echo["url"] == f"{mock_upstream}/echo"
        assert echo["reasons"] == [f"no credential: no [[market.credentials]] entry for {mock_upstream}/echo"]
        assert views["delta"]["routable"] and views["delta"]["kind"] == "feed"
        assert "sk-delta" not in str(views)  # the key stays in the gateway's config
        # Cheaper than everyone, never chosen: not by the routers, not in /v1/models, not for gpt-4o either.
        route = stack.routers[0].route(RouteRequest(request_id="r", model="auto", input_tokens=10))
        assert "echo" not in {c.provider for c in route.candidates}
        async with http.get(f"{stack.url}/v1/models/gpt-4o") as m:
            assert "echo" not in (await m.json())["providers"]
        async with http.get(f"{stack.url}/health") as h:
            assert (await h.json())["providers"]["delta"]["usable"]


async def test_discovery_replaces_the_list_on_success_and_keeps_it_on_failure(
        http: aiohttp.ClientSession, nats_url: str, mock_upstream: str, market: MarketServer) -> None:
    market.listings["disco"] = listing({MODEL: (0.002, 0.003), "disco-large": None}, context=64_000)
    disco = {"name": "disco", "url": f"{market.url}/disco/v1", "api_key": "sk-disco", "models": ["configured-only"],
             "input_rate": 9000, "output_rate": 9000, "discover": True, "tier": "frontier"}
    alpha = {"name": "alpha", "url": f"{mock_upstream}/alpha/v1", "models": [MODEL], "input_rate": 8000,
             "output_rate": 8000, "tier": "frontier"}
    cfg = demo_config(mock_upstream, providers=[alpha, disco], market={"discovery_interval_s": 0.1})
    async with running(cfg, nats_url) as stack:
        router = stack.routers[0]
        await within(1.0, lambda: router.prices.get("disco") is not None
                     and router.prices["disco"].models == [MODEL, "disco-large"])
        entry = router.prices["disco"]
        assert entry.rates_for(MODEL).input_rate == 2000 and entry.rates_for("disco-large").input_rate == 9000
        assert first(router) == "disco" and first(router, "disco-large") == "disco"
        assert ("/disco/v1/models", {"Authorization": "Bearer sk-disco"}) in market.requests

        market.listing_status["disco"] = 500
        await within(1.0, lambda: any("discovery failed" in n for n in pricing(stack).entry("disco").notes))
        view = (await providers(http, stack))["disco"]
        assert view["models"] == [MODEL, "disco-large"] and view["routable"]
        assert "HTTP 500; keeping the last good model list (2 models" in view["notes"][0]
        assert first(router, "disco-large") == "disco"

        del market.listing_status["disco"]
        market.listings["disco"] = listing({"disco-xl": (0.01, 0.01)})
        await within(1.0, lambda: router.prices["disco"].models == ["disco-xl"])
        assert first(router, "disco-xl") == "disco" and router.prices["disco"].notes == []


async def test_the_guard_holds_a_100x_jump_until_an_admin_confirms(
        http: aiohttp.ClientSession, nats_url: str, mock_upstream: str, market: MarketServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARBSTR_ADMIN_TOKEN", ADMIN)
    market.quotes = [quote("alpha-co", f"{mock_upstream}/alpha/v1", MODEL, 7000, 7000)]
    async with running(config(mock_upstream, market), nats_url) as stack:
        router = stack.routers[1]
        await within(1.0, lambda: router.prices["alpha"].rates_for(MODEL).input_rate == 7000)

        market.quotes = [quote("alpha-co", f"{mock_upstream}/alpha/v1", MODEL, 700_000, 700_000)]
        await within(1.0, lambda: MODEL in router.prices["alpha"].held)
        assert router.prices["alpha"].rates_for(MODEL).input_rate == 7000  # the old price is in force
        assert first(router) == "alpha"
        # A second pricing instance (or a restarted one) keeps the hold: it compares with what is published.
        second = PricingActor(stack.config)
        await _host(stack, second)
        assert await second.wait_for(lambda a: a.settled(), 2)
        await asyncio.sleep(0.3)
        assert all(MODEL in r.prices["alpha"].held and r.prices["alpha"].rates_for(MODEL).input_rate == 7000
                   for r in stack.routers)
        alpha = (await providers(http, stack))["alpha"]
        assert alpha["routable"] and alpha["held"][MODEL]["input_rate"] == 700_000
        assert alpha["held"][MODEL]["previous_input_rate"] == 7000
        assert any(n.startswith(f"price of {MODEL} held by the guard") and "700000/700000" in n
                   for n in alpha["notes"])
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            args = argparse.Namespace(url=stack.url, format="table", action=None)
            assert await asyncio.to_thread(providers_cli.main, args) == 0
        table = out.getvalue()
        assert table.splitlines()[0].split()[:3] == ["provider", "kind", "tier"]
        assert "note: price of gpt-4o-mini held by the guard" in table and "config+feed:seed" in table

        confirm_url = f"{stack.url}/v1/admin/prices/alpha/confirm"
        async with http.post(confirm_url) as r:
            assert r.status == 401
        async with http.post(confirm_url, headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401 and (await r.json())["error"]["code"] == "invalid_api_key"
        async with http.post(f"{stack.url}/v1/admin/prices/beta/confirm",
                             headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            assert r.status == 409 and (await r.json())["error"]["code"] == "nothing_held"
        async with http.post(confirm_url, headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            assert r.status == 200
            assert (await r.json())["confirmed"] == {MODEL: {"input_rate": 700_000, "output_rate": 700_000}}
        await within(1.0, lambda: all(r.prices["alpha"].rates_for(MODEL).input_rate == 700_000
                                      and not r.prices["alpha"].held for r in stack.routers))
        await asyncio.sleep(0.3)  # later polls of both instances are compared with the confirmed price
        assert all(not r.prices["alpha"].held for r in stack.routers) and first(router) == "beta"


async def test_the_providers_command_prints_json(nats_url: str, mock_upstream: str, market: MarketServer) -> None:
    market.quotes = [quote("zed", f"{mock_upstream}/zed/v1", MODEL, 100, 100)]
    async with running(config(mock_upstream, market), nats_url) as stack:
        await within(1.0, lambda: pricing(stack).entry("zed") is not None)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            args = argparse.Namespace(url=stack.url, format="json", action=None)
            assert await asyncio.to_thread(providers_cli.main, args) == 0
    import json

    doc = json.loads(out.getvalue())
    zed = next(p for p in doc["data"] if p["name"] == "zed")
    assert not zed["routable"] and zed["reasons"][0].startswith("no credential")
