"""The pricing and router actors on a real nats-server: KV publication, watching, queue groups.

Each test gets its own nats-server, so the KV buckets start empty whatever other test files left behind.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Optional

from nats.aio.client import Client as NATS

from actors.pricing.actor import PricingActor
from actors.router.actor import RouterActor
from schemas import subjects
from schemas.breaker import BreakerState
from schemas.config import Config, PolicyConfig, ProviderConfig
from schemas.errors import ErrorBody
from schemas.pricing import PriceTable, ProviderPrices, QuoteReply, QuoteRequest, TableRequest
from schemas.router import RouteReply, RouteRequest
from tests.support.hosts import Hosts
from tests.support.waiting import eventually


def _provider(name: str, inp: int, out: int, models: Optional[list[str]] = None, **kw: Any) -> ProviderConfig:
    return ProviderConfig(name=name, url=f"http://{name}.test/v1", models=models or ["gpt-4o"], input_rate=inp,
                          output_rate=out, **kw)


CONFIG = Config(
    providers=[_provider("alpha", 3000, 3000), _provider("beta", 1000, 1000), _provider("gamma", 2000, 2000)],
    policies=[PolicyConfig(name="budget", keywords=["cheap"], max_input_rate=2500)],
)


def route_req(model: str = "gpt-4o", **kw: Any) -> bytes:
    kw.setdefault("input_tokens", 1000)
    return RouteRequest(request_id="r-1", model=model, **kw).model_dump_json().encode()


async def call(nc: NATS, subject: str, data: bytes) -> tuple[bytes, dict[str, str]]:
    msg = await nc.request(subject, data, timeout=2)
    return msg.data, dict(msg.headers or {})


async def route_ok(nc: NATS, **kw: Any) -> RouteReply:
    data, headers = await call(nc, subjects.ROUTER_ROUTE, route_req(**kw))
    assert subjects.H_SERVICE_ERROR_CODE not in headers, data
    return RouteReply.model_validate_json(data)


async def route_error(nc: NATS, **kw: Any) -> tuple[int, ErrorBody, dict[str, str]]:
    data, headers = await call(nc, subjects.ROUTER_ROUTE, route_req(**kw))
    assert subjects.H_SERVICE_ERROR_CODE in headers, data
    return int(headers[subjects.H_SERVICE_ERROR_CODE]), ErrorBody.model_validate_json(data), headers


def providers(reply: RouteReply) -> list[str]:
    return [c.provider for c in reply.candidates]


async def test_route_quote_and_table_over_the_bus(hosts: Hosts, client: NATS) -> None:
    await hosts.start(PricingActor(CONFIG))
    await hosts.start(RouterActor(CONFIG))

    reply = await route_ok(client, max_tokens=500)
    assert providers(reply) == ["beta", "gamma", "alpha"]
    # The hold covers the candidate about to be called; a fallback to a costlier one extends it first.
    assert reply.envelope.input_rate == 1000 and reply.envelope.output_tokens == 500
    assert reply.candidates[0].estimated_cost_msat == 1500  # (1000·1000 + 500·1000)·1000 / 1e6

    cheap = await route_ok(client, last_user_text="something cheap please")
    assert cheap.policy == "budget" and providers(cheap) == ["beta", "gamma"]

    status, body, _ = await route_error(client, model="nope")
    assert (status, body.error.code, body.error.param) == (404, "model_not_found", "model")
    status, body, _ = await route_error(client, policy="nope")
    assert (status, body.error.code) == (400, "unknown_policy")
    data, headers = await call(client, subjects.ROUTER_ROUTE, b'{"model": "gpt-4o"}')
    assert headers[subjects.H_SERVICE_ERROR_CODE] == "400"

    data, headers = await call(client, subjects.PRICING_QUOTE,
                               QuoteRequest(model="gpt-4o", input_tokens=1000, output_tokens=1000)
                               .model_dump_json().encode())
    quotes = QuoteReply.model_validate_json(data).quotes
    assert [(q.provider, q.cost_msat) for q in quotes] == [("beta", 2000), ("gamma", 4000), ("alpha", 6000)]

    data, _ = await call(client, subjects.PRICING_TABLE, TableRequest().model_dump_json().encode())
    table = PriceTable.model_validate_json(data)
    assert [p.provider for p in table.providers] == ["alpha", "beta", "gamma"]


async def test_pricing_publishes_to_kv_and_removes_unconfigured_providers(hosts: Hosts, client: NATS) -> None:
    kv = await client.jetstream().create_key_value(bucket=subjects.KV_PRICES, history=1)
    stale = ProviderPrices(provider="retired", tier="standard", models=["gpt-4o"], input_rate=1, output_rate=1)
    await kv.put("retired", stale.model_dump_json().encode())

    await hosts.start(PricingActor(CONFIG))

    assert sorted(await kv.keys()) == ["alpha", "beta", "gamma"]
    beta = ProviderPrices.model_validate_json((await kv.get("beta")).value or b"")
    assert (beta.input_rate, beta.output_rate, beta.models, beta.source) == (1000, 1000, ["gpt-4o"], "config")
    assert beta.updated_at_ms > 0


async def test_router_started_first_answers_503_until_prices_arrive(hosts: Hosts, client: NATS) -> None:
    router = RouterActor(CONFIG)
    await hosts.start(router)  # creates the buckets itself: start order does not matter
    status, body, _ = await route_error(client)
    assert (status, body.error.code) == (503, "prices_unavailable")

    await hosts.start(PricingActor(CONFIG))
    assert await router.wait_for(lambda r: {"alpha", "beta", "gamma"} <= r.prices.keys(), timeout=2)
    assert providers(await route_ok(client)) == ["beta", "gamma", "alpha"]


async def test_a_kv_price_change_reaches_the_router_within_a_second(hosts: Hosts, client: NATS) -> None:
    await hosts.start(PricingActor(CONFIG))
    router = RouterActor(CONFIG)
    await hosts.start(router)
    assert providers(await route_ok(client))[0] == "beta"

    kv = await client.jetstream().key_value(subjects.KV_PRICES)
    cheaper = ProviderPrices(provider="alpha", tier="standard", models=["gpt-4o"], input_rate=10, output_rate=10)
    revision = await kv.put("alpha", cheaper.model_dump_json().encode())

    async def alpha_first() -> bool:
        return providers(await route_ok(client))[0] == "alpha"

    took = await eventually(alpha_first, timeout_s=5.0, interval_s=0.005)
    print(f"a KV price change reached the router in {took * 1000:.0f} ms")  # measured, not asserted (bench/ does)
    assert router.revisions[subjects.KV_PRICES] >= revision
    assert await router.wait_revision(subjects.KV_PRICES, revision, timeout=0.1)

    # A deleted key removes the provider.
    await kv.delete("alpha")

    async def alpha_gone() -> bool:
        return "alpha" not in providers(await route_ok(client))

    await eventually(alpha_gone, timeout_s=5.0, interval_s=0.005)


async def test_a_router_whose_watch_dies_watches_again_and_drops_what_was_deleted_meanwhile(
        hosts: Hosts, client: NATS) -> None:
    await hosts.start(PricingActor(CONFIG))
    router = RouterActor(CONFIG)
    await hosts.start(router)
    kv = await client.jetstream().key_value(subjects.KV_PRICES)
    cheaper = ProviderPrices(provider="alpha", tier="standard", models=["gpt-4o"], input_rate=10, output_rate=10)
    await kv.put("alpha", cheaper.model_dump_json().encode())

    async def alpha_first() -> bool:
        return providers(await route_ok(client))[0] == "alpha"
    await eventually(alpha_first, timeout_s=5.0, interval_s=0.005)
    prices_watch = router.followers[0].watcher
    await prices_watch.stop()  # what a lost consumer looks like to the router
    await kv.delete("alpha")  # missed by the dead watch
    extra = ProviderPrices(provider="zeta", tier="standard", models=["gpt-4o"], input_rate=1, output_rate=1)
    await kv.put("zeta", extra.model_dump_json().encode())

    async def zeta_first_alpha_gone() -> bool:
        listed = providers(await route_ok(client))
        return listed[0] == "zeta" and "alpha" not in listed
    await eventually(zeta_first_alpha_gone, timeout_s=6.0, interval_s=0.005)
    assert router.followers[0].watcher is not prices_watch
    await kv.delete("zeta")


async def test_breaker_states_from_kv_exclude_providers(hosts: Hosts, client: NATS) -> None:
    await hosts.start(PricingActor(CONFIG))
    router = RouterActor(CONFIG)
    await hosts.start(router)
    kv = await client.jetstream().key_value(subjects.KV_BREAKERS)
    now = int(time.time() * 1000)

    def state(provider: str, status: str, retry_in_ms: int) -> bytes:
        return BreakerState(provider=provider, state=status, retry_at_ms=now + retry_in_ms).model_dump_json().encode()  # type: ignore[arg-type]

    await kv.put("beta", state("beta", "open", 60_000))
    assert await router.wait_for(lambda r: "beta" in r.breakers, timeout=5)
    assert providers(await route_ok(client)) == ["gamma", "alpha"]

    await kv.put("gamma", state("gamma", "half_open", 60_000))
    await kv.put("alpha", state("alpha", "open", 30_000))
    assert await router.wait_for(lambda r: "alpha" in r.breakers, timeout=5)
    assert providers(await route_ok(client)) == ["gamma"]

    await kv.put("gamma", state("gamma", "open", 20_000))
    assert await router.wait_for(lambda r: r.breakers["gamma"].state == "open", timeout=5)
    status, body, headers = await route_error(client)
    assert (status, body.error.code) == (503, "no_provider_available")
    assert 19 <= int(headers["X-Http-retry-after"]) <= 20

    await kv.delete("beta")
    assert await router.wait_for(lambda r: "beta" not in r.breakers, timeout=5)
    assert providers(await route_ok(client)) == ["beta"]


async def _route_stats(nc: NATS, instances: int) -> dict[str, int]:
    """num_requests of the route endpoint per router instance, from nats micro $SRV.STATS (until ``instances``
    answered, or 5 s)."""
    inbox = nc.new_inbox()
    replies: list[dict[str, Any]] = []

    async def collect(msg: Any) -> None:
        replies.append(json.loads(msg.data))

    sub = await nc.subscribe(inbox, cb=collect)
    await nc.publish(f"$SRV.STATS.{subjects.SERVICE_ROUTER}", b"", reply=inbox)
    deadline = time.monotonic() + 5
    while len(replies) < instances and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # room for a reply from an instance that should not be there
    await sub.unsubscribe()
    return {r["id"]: sum(e["num_requests"] for e in r["endpoints"] if e["subject"] == subjects.ROUTER_ROUTE)
            for r in replies}


async def test_two_routers_share_the_load_and_one_survives_the_other(hosts: Hosts, client: NATS) -> None:
    await hosts.start(PricingActor(CONFIG))
    first = await hosts.start(RouterActor(CONFIG))
    await hosts.start(RouterActor(CONFIG))

    replies = await asyncio.gather(*(route_ok(client) for _ in range(60)))
    assert all(providers(r)[0] == "beta" for r in replies)
    stats = await _route_stats(client, 2)
    assert len(stats) == 2, stats
    assert sum(stats.values()) == 60 and all(n > 0 for n in stats.values()), stats

    await hosts.stop(first)
    replies = await asyncio.gather(*(route_ok(client) for _ in range(30)))
    assert len(replies) == 30
    stats_after = await _route_stats(client, 1)
    assert len(stats_after) == 1
    (survivor, handled), = stats_after.items()
    assert handled == stats[survivor] + 30
