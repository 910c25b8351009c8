"""The operator views (gateway/ops.py): GET /providers, POST /v1/cost, GET /health — pure pieces, then over HTTP
against a real stack whose breakers are opened by injected upstream failures."""

from __future__ import annotations

from typing import Any, AsyncIterator, Optional

import aiohttp
import nats
import pytest
from aiohttp import web

from actors.breaker.actor import BreakerActor
from actors.runtime.host import ActorHost
from arbstr.natsserver import NatsServer
from gateway.app import Gateway, envelope
from gateway.ops import health_of, ops_handlers, provider_views, reserve_of
from gateway.routes import register
from schemas.breaker import BreakerState
from schemas.config import Config, parse_config
from schemas.money import cost_msat
from schemas.pricing import ProviderPrices
from schemas.router import Candidate, Envelope, RouteReply
from tests.support.stack import Stack, start_stack

NOW = 1_700_000_000_000
PROVIDERS = ("ops_a", "ops_b")


def closed(name: str) -> BreakerState:
    return BreakerState(provider=name)


def opened(name: str, retry_at_ms: int, error: str = "http_5xx (HTTP 500)") -> BreakerState:
    return BreakerState(provider=name, state="open", consecutive_failures=3, opened_at_ms=NOW,
                        retry_at_ms=retry_at_ms, last_error=error)


def pp(name: str, models: list[str], rate: int = 100) -> ProviderPrices:
    return ProviderPrices(provider=name, tier="standard", models=models, input_rate=rate, output_rate=rate)


# --- pure -----------------------------------------------------------------------------------------------------------
def test_provider_views_say_why_a_provider_is_not_routable() -> None:
    prices = [pp("a", ["m"]), pp("b", ["m"]), pp("empty", []), pp("foreign", ["m"])]
    breakers = {"a": closed("a"), "b": opened("b", NOW + 4_500)}
    views = {v.name: v for v in provider_views(["a", "b", "empty", "unpriced"], prices, breakers, NOW)}
    assert views["a"].routable and views["a"].reasons == [] and views["a"].breaker.state == "closed"  # type: ignore
    assert not views["b"].routable and views["b"].breaker.retry_in_s == 5  # type: ignore[union-attr]
    assert views["b"].reasons == ["breaker open: circuit open for 5 s more after http_5xx (HTTP 500)"]
    assert views["empty"].reasons == ["serves no models (empty model list)"]
    assert views["unpriced"].reasons == ["no prices published for it: the router does not know it"]
    assert views["foreign"].reasons == ["not configured on this gateway: no URL or credentials to call it"]
    # An open breaker whose retry time has come is routable again (its probe decides).
    assert provider_views(["b"], prices[1:2], {"b": opened("b", NOW)}, NOW)[0].routable
    # Unknown breaker states do not make a provider unroutable; unknown prices do.
    only_a = provider_views(["a"], prices[:1], None, NOW)
    assert only_a[0].routable and only_a[0].breaker is None
    no_prices = provider_views(["a"], None, breakers, NOW)
    assert not no_prices[0].routable and no_prices[0].reasons[0].startswith("price table unavailable")


def test_health_levels() -> None:
    both = {"a": True, "b": True}
    assert health_of(both, {}, True, NOW)[0] == "ok"
    status, providers = health_of(both, {"b": opened("b", NOW + 2_000)}, True, NOW)
    assert status == "degraded"
    assert (providers["b"].state, providers["b"].usable, providers["b"].retry_in_s) == ("open", False, 2)
    assert providers["b"].last_error == "http_5xx (HTTP 500)"
    half = BreakerState(provider="b", state="half_open")
    assert health_of(both, {"b": half}, True, NOW)[0] == "degraded"
    assert health_of(both, None, True, NOW)[0] == "degraded"  # breaker states unknown
    assert health_of(both, {"a": opened("a", NOW + 1), "b": opened("b", NOW + 1)}, True, NOW)[0] == "unhealthy"
    assert health_of(both, {}, False, NOW)[0] == "unhealthy"
    assert health_of({"a": False}, {}, True, NOW)[0] == "unhealthy"  # no models: nothing usable
    assert health_of({}, {}, True, NOW)[0] == "unhealthy"


def test_reserve_is_the_envelope_over_max_tokens_or_the_ceiling() -> None:
    def reply(output_tokens: Optional[int]) -> RouteReply:
        cand = Candidate(provider="a", model="m", input_rate=100, output_rate=400, tier="standard",
                         estimated_cost_msat=1)
        env = Envelope(input_tokens=1000, output_tokens=output_tokens, input_rate=300, output_rate=900,
                       base_fee_msat=5, max_output_tokens=4096)
        return RouteReply(request_id="r", model="m", tier="standard", complexity="medium", candidates=[cand],
                          envelope=env)

    r = reserve_of(reply(200))
    assert (r.amount_msat, r.output_tokens, r.output_budget) == (cost_msat(1000, 200, 300, 900, 5), 200, "max_tokens")
    r = reserve_of(reply(None))
    assert (r.amount_msat, r.output_tokens, r.output_budget) == (cost_msat(1000, 4096, 300, 900, 5), 4096, "ceiling")


# --- over HTTP ------------------------------------------------------------------------------------------------------
def config(mock_url: str, names: tuple[str, ...] = PROVIDERS) -> Config:
    return parse_config({
        "server": {"host": "127.0.0.1", "port": 0},
        "breaker": {"failure_threshold": 1, "cooldown_s": 30, "tick_interval_s": 0.05},
        "router": {"default_output_tokens": 100, "max_output_tokens": 2000},
        "providers": [{"name": n, "url": f"{mock_url}/{n}/v1", "models": ["gpt-4o-mini", "gpt-4o"],
                       "input_rate": 1000 * (i + 1), "output_rate": 2000 * (i + 1), "base_fee_msat": 7,
                       "tier": "standard" if i == 0 else "frontier"}
                      for i, n in enumerate(names)],
        "policies": [{"name": "mini", "keywords": ["briefly"], "allowed_models": ["gpt-4o-mini"]}],
    })


@pytest.fixture(autouse=True)
async def clean_mock(mock_upstream: str) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as s:
        for p in PROVIDERS:
            await s.delete(f"{mock_upstream}/_mock/{p}/faults")
            await s.delete(f"{mock_upstream}/_mock/{p}/stats")
    yield
    async with aiohttp.ClientSession() as s:
        for p in PROVIDERS:
            await s.delete(f"{mock_upstream}/_mock/{p}/faults")


class Ops:
    def __init__(self, stack: Stack, url: str, runner: web.AppRunner) -> None:
        self.stack = stack
        self.url = url
        self.runner = runner


async def serve_ops(gw: Gateway) -> tuple[str, web.AppRunner]:
    """The ops routes on an app of their own (same middleware as the gateway's), backed by ``gw``."""
    app = web.Application(middlewares=[envelope])
    register(app, ops_handlers(gw), gw.guards())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", runner  # type: ignore[union-attr]


@pytest.fixture
async def ops(fresh_nats: NatsServer, mock_upstream: str) -> AsyncIterator[Ops]:
    stack = await start_stack(config(mock_upstream), fresh_nats.url)
    url, runner = await serve_ops(stack.gateway)
    yield Ops(stack, url, runner)
    await runner.cleanup()
    await stack.stop()


async def fail(http: aiohttp.ClientSession, ops: Ops, mock_upstream: str, provider: str) -> None:
    """One 500 from ``provider`` opens its breaker (threshold 1); wait until the router sees it."""
    async with aiohttp.ClientSession() as s:
        await s.post(f"{mock_upstream}/_mock/{provider}/faults", json={"status": 500, "count": 1})
    r = await http.post(f"{ops.stack.url}/v1/chat/completions",
                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    await r.read()
    router = ops.stack.routers[0]
    assert await router.wait_for(lambda rt: rt.breakers.get(provider) is not None
                                 and rt.breakers[provider].state == "open", 3)


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    r = await http.get(url)
    return r.status, await r.json()


async def test_providers_lists_rates_tiers_and_breaker_state(http: aiohttp.ClientSession, ops: Ops,
                                                             mock_upstream: str) -> None:
    status, body = await get(http, f"{ops.url}/providers")
    assert status == 200 and body["object"] == "list"
    assert body["breakers_available"] and body["prices_available"]
    a, b = body["data"]
    assert (a["name"], a["tier"], a["input_rate"], a["output_rate"], a["base_fee_msat"]) == \
        ("ops_a", "standard", 1000, 2000, 7)
    assert (b["name"], b["tier"]) == ("ops_b", "frontier")
    assert a["models"] == ["gpt-4o-mini", "gpt-4o"]
    assert a["breaker"]["state"] == "closed" and a["routable"] and a["reasons"] == []
    await fail(http, ops, mock_upstream, "ops_a")
    status, body = await get(http, f"{ops.url}/v1/providers")
    a = body["data"][0]
    assert a["breaker"]["state"] == "open" and not a["routable"]
    assert a["reasons"][0].startswith("breaker open: circuit open for ") and "HTTP 500" in a["reasons"][0]
    assert 1 <= a["breaker"]["retry_in_s"] <= 30


async def test_providers_names_providers_this_gateway_cannot_call(http: aiohttp.ClientSession, ops: Ops,
                                                                  mock_upstream: str) -> None:
    narrow = Gateway(config(mock_upstream, ("ops_a",)), ops.stack.nc)
    url, runner = await serve_ops(narrow)
    try:
        status, body = await get(http, f"{url}/providers")
        views = {v["name"]: v for v in body["data"]}
        assert views["ops_a"]["routable"]
        assert not views["ops_b"]["routable"] and "not configured on this gateway" in views["ops_b"]["reasons"][0]
    finally:
        await runner.cleanup()


async def test_cost_estimates_without_calling_upstream(http: aiohttp.ClientSession, ops: Ops,
                                                       mock_upstream: str) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there, how are you?"}],
            "max_tokens": 50}
    r = await http.post(f"{ops.url}/v1/cost", json=body)
    assert r.status == 200, await r.text()
    est = await r.json()
    assert est["object"] == "arbstr.cost_estimate" and r.headers["x-request-id"] == est["request_id"]
    assert (est["model"], est["complexity"], est["tier"]) == ("gpt-4o-mini", "low", "local")
    assert r.headers["x-arbstr-complexity"] == "low"
    n = est["input_tokens"]
    assert n > 0 and est["output_tokens"] == 50
    cands = [(c["provider"], c["estimated_cost_msat"], c["probe"]) for c in est["candidates"]]
    assert cands == [("ops_a", cost_msat(n, 50, 1000, 2000, 7), False), ("ops_b", cost_msat(n, 50, 2000, 4000, 7),
                                                                         False)]
    assert est["estimated_cost_msat"] == cands[0][1]
    # The hold is sized to the first candidate (a fallback to ops_b would extend it first).
    assert est["reserve"] == {"amount_msat": cost_msat(n, 50, 1000, 2000, 7), "output_tokens": 50,
                              "output_budget": "max_tokens", "input_rate": 1000, "output_rate": 2000,
                              "base_fee_msat": 7}
    # No max_tokens: ranked with the default output estimate, reserved up to the ceiling.
    del body["max_tokens"]
    est = await (await http.post(f"{ops.url}/cost", json=body)).json()
    assert est["output_tokens"] == 100 and est["candidates"][0]["estimated_cost_msat"] == cost_msat(
        n, 100, 1000, 2000, 7)
    assert (est["reserve"]["output_tokens"], est["reserve"]["output_budget"]) == (2000, "ceiling")
    async with aiohttp.ClientSession() as s:
        for p in PROVIDERS:
            assert (await (await s.get(f"{mock_upstream}/_mock/{p}/stats")).json())["requests"] == 0


async def test_cost_explains_the_tier_decision(http: aiohttp.ClientSession, ops: Ops) -> None:
    """POST /v1/cost shows the predicted tier, the model's confidence and the features that decided it."""
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "write a SQL query that ranks customers by "
                                                                        "revenue"}]}
    r = await http.post(f"{ops.url}/v1/cost", json=body)
    assert r.status == 200
    est = await r.json()
    assert (est["tier"], est["complexity"], est["predicted_tier"]) == ("standard", "medium", "standard")
    assert r.headers["x-arbstr-complexity"] == "medium"
    assert 0 < est["confidence"] <= 1 and est["confidence"] == est["explanation"]["probabilities"]["standard"]
    names = [f["name"] for f in est["top_features"]]
    assert "lex:sql" in names and all(isinstance(f["weight"], float) for f in est["top_features"])
    assert est["explanation"]["scorer"] == "trained" and not est["explanation"]["overridden"]
    r = await http.post(f"{ops.url}/v1/cost", json=body, headers={"X-Arbstr-Complexity": "high"})
    est = await r.json()
    assert (est["tier"], est["predicted_tier"], est["explanation"]["overridden"]) == ("frontier", "standard", True)


async def test_cost_applies_headers_policies_and_other_endpoints(http: aiohttp.ClientSession, ops: Ops) -> None:
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    est = await (await http.post(f"{ops.url}/v1/cost", json=chat, headers={"X-Arbstr-Complexity": "high"})).json()
    assert (est["complexity"], est["tier"]) == ("high", "frontier")
    assert [c["provider"] for c in est["candidates"]] == ["ops_b"]
    r = await http.post(f"{ops.url}/v1/cost", json={**chat, "model": "gpt-4o-mini",
                                                      "messages": [{"role": "user", "content": "say it briefly"}]})
    assert r.status == 200 and (await r.json())["policy"] == "mini" and r.headers["x-arbstr-policy"] == "mini"
    r = await http.post(f"{ops.url}/v1/cost", json={"model": "gpt-4o-mini", "prompt": "Once upon a time"})
    assert r.status == 200 and (await r.json())["candidates"]
    r = await http.post(f"{ops.url}/v1/cost", json={"model": "gpt-4o-mini", "input": "embed me"})
    assert r.status == 200 and (await r.json())["output_tokens"] == 100


@pytest.mark.parametrize("body,headers,status,code", [
    ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, {}, 404, "model_not_found"),
    ({"model": "gpt-4o-mini"}, {}, 400, "invalid_value"),
    ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}, {"X-Arbstr-Complexity": "max"}, 400,
     "invalid_header"),
    ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}, {"X-Arbstr-Policy": "nope"}, 400,
     "unknown_policy"),
])
async def test_cost_errors_are_openai_shaped(http: aiohttp.ClientSession, ops: Ops, body: dict[str, Any],
                                             headers: dict[str, str], status: int, code: str) -> None:
    r = await http.post(f"{ops.url}/v1/cost", json=body, headers=headers)
    assert r.status == status
    err = (await r.json())["error"]
    assert err["code"] == code and err["message"] and "type" in err and "param" in err
    r = await http.post(f"{ops.url}/v1/cost", data=b"{oops", headers={"Content-Type": "application/json"})
    assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_json"


async def test_cost_when_every_breaker_is_open_is_503(http: aiohttp.ClientSession, ops: Ops,
                                                      mock_upstream: str) -> None:
    await fail(http, ops, mock_upstream, "ops_a")
    await fail(http, ops, mock_upstream, "ops_b")
    r = await http.post(f"{ops.url}/v1/cost", json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
    assert r.status == 503 and int(r.headers["retry-after"]) >= 1


async def test_health_ok_degraded_unhealthy(http: aiohttp.ClientSession, ops: Ops, mock_upstream: str) -> None:
    status, body = await get(http, f"{ops.url}/health")
    assert (status, body["status"], body["nats"], body["mode"]) == (200, "ok", True, "free")
    assert body["providers"] == {p: {"state": "closed", "usable": True, "retry_in_s": None, "last_error": None}
                                 for p in PROVIDERS}
    await fail(http, ops, mock_upstream, "ops_a")
    status, body = await get(http, f"{ops.url}/health")
    assert (status, body["status"], body["usable_providers"]) == (200, "degraded", 1)
    assert body["providers"]["ops_a"]["state"] == "open" and not body["providers"]["ops_a"]["usable"]
    await fail(http, ops, mock_upstream, "ops_b")
    status, body = await get(http, f"{ops.url}/health")
    assert (status, body["status"], body["usable_providers"]) == (503, "unhealthy", 0)


async def test_health_without_the_breaker_actor_is_degraded(http: aiohttp.ClientSession, fresh_nats: NatsServer,
                                                            mock_upstream: str) -> None:
    stack = await start_stack(config(mock_upstream), fresh_nats.url, breakers=False)
    url, runner = await serve_ops(stack.gateway)
    try:
        status, body = await get(http, f"{url}/health")
        assert (status, body["status"], body["breakers_available"]) == (200, "degraded", False)
        assert {p["state"] for p in body["providers"].values()} == {"unknown"}
        # Started now, the breaker answers and health is ok again.
        nc = await nats.connect(fresh_nats.url)
        host = ActorHost(BreakerActor(stack.config), nc)
        await host.start()
        try:
            status, body = await get(http, f"{url}/health")
            assert (status, body["status"]) == (200, "ok")
        finally:
            await host.stop()
            await nc.drain()
    finally:
        await runner.cleanup()
        await stack.stop()
