"""The breaker actor on a real nats-server: outcomes into KV, compare-and-set between instances, the tick,
the probe and state endpoints, and routers seeing the result.

Each test gets its own nats-server, so the ``arbstr_breakers`` bucket starts empty.
"""

from __future__ import annotations

import asyncio
import time
from typing import Optional

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError

from actors.breaker.actor import BreakerActor
from actors.pricing.actor import PricingActor
from actors.router.actor import RouterActor
from schemas import subjects
from schemas.breaker import Outcome, OutcomeKind, ProbeReply, ProbeRequest, StateReply, StateRequest
from schemas.config import BreakerConfig, Config, ProviderConfig
from schemas.errors import ErrorBody
from schemas.router import RouteReply, RouteRequest
from tests.support.hosts import Hosts
from tests.support.breakers import stored
from tests.support.waiting import eventually


def _provider(name: str, rate: int) -> ProviderConfig:
    return ProviderConfig(name=name, url=f"http://{name}.test/v1", models=["m"], input_rate=rate, output_rate=rate)


def config(**breaker: float) -> Config:
    values = {"failure_threshold": 3, "cooldown_s": 0.4, "probe_timeout_s": 0.4, "tick_interval_s": 0.05, **breaker}
    return Config(providers=[_provider("alpha", 1000), _provider("beta", 2000)],
                  breaker=BreakerConfig(**values))  # type: ignore[arg-type]


async def publish(nc: NATS, provider: str, kind: OutcomeKind, request_id: str = "r", *, probe: bool = False,
                  retry_after_s: Optional[float] = None) -> None:
    event = Outcome(provider=provider, request_id=request_id, kind=kind, probe=probe, retry_after_s=retry_after_s)
    await nc.publish(subjects.breaker_outcome(provider), event.model_dump_json().encode())


async def stored_is(nc: NATS, provider: str, state: str) -> bool:
    s = await stored(nc, provider)
    return s is not None and s.state == state


async def probe(nc: NATS, provider: str, probe_id: str) -> ProbeReply:
    msg = await nc.request(subjects.BREAKER_PROBE, ProbeRequest(provider=provider, probe_id=probe_id)
                           .model_dump_json().encode(), timeout=2)
    assert subjects.H_SERVICE_ERROR_CODE not in (msg.headers or {}), msg.data
    return ProbeReply.model_validate_json(msg.data)


async def state_call(nc: NATS, provider: Optional[str] = None) -> tuple[int, bytes]:
    payload = StateRequest(provider=provider).model_dump_json().encode()
    for attempt in range(20):  # a just-started instance's interest can reach the server a moment after its flush
        try:
            msg = await nc.request(subjects.BREAKER_STATE, payload, timeout=2)
            break
        except NoRespondersError:
            if attempt == 19:
                raise
            await asyncio.sleep(0.05)
    code = (msg.headers or {}).get(subjects.H_SERVICE_ERROR_CODE)
    return (int(code) if code else 200), msg.data


async def open_breaker(nc: NATS, provider: str = "alpha", failures: int = 3) -> None:
    for i in range(failures):
        await publish(nc, provider, "http_5xx", f"fail-{i}")
    await eventually(lambda: stored_is(nc, provider, "open"), timeout_s=3.0, interval_s=0.01)


async def test_failures_open_the_breaker_and_routers_stop_routing_there(hosts: Hosts, client: NATS) -> None:
    cfg = config(cooldown_s=30)
    await hosts.start(PricingActor(cfg))
    await hosts.start(BreakerActor(cfg))
    router = RouterActor(cfg)
    await hosts.start(router)

    async def route() -> RouteReply:
        msg = await client.request(subjects.ROUTER_ROUTE, RouteRequest(request_id="q", model="m", input_tokens=10)
                                   .model_dump_json().encode(), timeout=2)
        return RouteReply.model_validate_json(msg.data)

    async def first_route() -> RouteReply:
        # Seen once in a loaded full run: the very first request met "no responders". Asked again briefly.
        for _ in range(20):
            try:
                return await route()
            except NoRespondersError:
                await asyncio.sleep(0.1)
        return await route()

    assert [c.provider for c in (await first_route()).candidates] == ["alpha", "beta"]
    await publish(client, "alpha", "timeout")
    await publish(client, "alpha", "connect")
    await eventually(lambda: _failures(client, "alpha", 2), timeout_s=3.0, interval_s=0.01)
    assert (await stored(client, "alpha")).state == "closed"  # type: ignore[union-attr]
    await publish(client, "alpha", "cut")
    await eventually(lambda: stored_is(client, "alpha", "open"), timeout_s=3.0, interval_s=0.01)
    s = await stored(client, "alpha")
    assert s is not None and s.retry_at_ms - s.opened_at_ms == 30_000 and s.last_error == "cut"
    assert await router.wait_for(lambda r: r.breakers.get("alpha") is not None
                                 and r.breakers["alpha"].state == "open", 2)
    assert [c.provider for c in (await route()).candidates] == ["beta"]


async def _failures(nc: NATS, provider: str, n: int) -> bool:
    s = await stored(nc, provider)
    return s is not None and s.consecutive_failures == n


async def test_successes_reset_the_count_and_a_429_opens_at_once(hosts: Hosts, client: NATS) -> None:
    await hosts.start(BreakerActor(config(cooldown_s=30)))
    await publish(client, "alpha", "http_5xx")
    await publish(client, "alpha", "http_5xx")
    await eventually(lambda: _failures(client, "alpha", 2), timeout_s=3.0, interval_s=0.01)
    await publish(client, "alpha", "http_4xx")  # the client's fault: the provider answered
    await eventually(lambda: _failures(client, "alpha", 0), timeout_s=3.0, interval_s=0.01)
    await publish(client, "beta", "http_429", retry_after_s=7)
    await eventually(lambda: stored_is(client, "beta", "open"), timeout_s=3.0, interval_s=0.01)
    s = await stored(client, "beta")
    assert s is not None and s.retry_at_ms - s.opened_at_ms == 7_000


async def test_two_instances_lose_no_outcome(hosts: Hosts, client: NATS) -> None:
    """Outcomes are split between instances (queue group); compare-and-set keeps every one of them."""
    cfg = config(failure_threshold=10_000)
    actors = [BreakerActor(cfg), BreakerActor(cfg)]
    for a in actors:
        await hosts.start(a)
    n = 400
    for i in range(n):
        await publish(client, "alpha", "http_5xx", f"r{i}")
        if i % 4 == 3:  # a steady trickle, so both instances write all the time
            await client.flush()
            await asyncio.sleep(0.001)
    await eventually(lambda: _failures(client, "alpha", n), timeout_s=10, interval_s=0.01)
    assert all(a.writes > 0 for a in actors), [a.writes for a in actors]  # both took a share


async def test_tick_moves_open_to_half_open_and_frees_an_expired_probe(hosts: Hosts, client: NATS) -> None:
    await hosts.start(BreakerActor(config(probe_timeout_s=1.5)))  # the second ask comes within it, loaded or not
    await open_breaker(client)
    # Nothing asks: the tick alone writes the half-open state once the cool-down has passed.
    await eventually(lambda: stored_is(client, "alpha", "half_open"), timeout_s=5, interval_s=0.01)
    granted = await probe(client, "alpha", "slow-probe")
    assert granted.granted and granted.probe_id == "slow-probe"
    assert not (await probe(client, "alpha", "other")).granted
    # The holder never reports back: after the probe timeout the slot is free again, in KV too.

    async def freed() -> bool:
        s = await stored(client, "alpha")
        return s is not None and s.state == "half_open" and s.probe_id is None

    await eventually(freed, timeout_s=5, interval_s=0.01)
    assert (await probe(client, "alpha", "other")).granted


async def test_one_probe_among_many_concurrent_askers_on_two_instances(hosts: Hosts, client: NATS) -> None:
    cfg = config(probe_timeout_s=30)
    for _ in range(2):
        await hosts.start(BreakerActor(cfg))
    await open_breaker(client)
    await asyncio.sleep(cfg.breaker.cooldown_s)
    replies = await asyncio.gather(*(probe(client, "alpha", f"req-{i}") for i in range(40)))
    winners = [r for r in replies if r.granted]
    assert len(winners) == 1, [r.probe_id for r in replies]
    holder = winners[0].probe_id
    assert all(r.probe_id == holder and r.state == "half_open" for r in replies)
    # The holder's outcome resolves the slot: success closes the breaker.
    await publish(client, "alpha", "ok", holder or "", probe=True)
    await eventually(lambda: stored_is(client, "alpha", "closed"), timeout_s=3.0, interval_s=0.01)
    assert (await probe(client, "alpha", "anyone")).granted


async def test_failed_probe_opens_again(hosts: Hosts, client: NATS) -> None:
    await hosts.start(BreakerActor(config(probe_timeout_s=30)))
    await open_breaker(client)
    await asyncio.sleep(0.4)
    assert (await probe(client, "alpha", "p1")).granted
    first = await stored(client, "alpha")
    await publish(client, "alpha", "http_5xx", "p1", probe=True)

    async def reopened() -> bool:
        s = await stored(client, "alpha")
        return s is not None and s.state == "open" and first is not None and s.opened_at_ms > first.opened_at_ms

    await eventually(reopened, timeout_s=3.0, interval_s=0.01)
    refused = await probe(client, "alpha", "p2")
    assert not refused.granted and refused.state == "open" and refused.retry_at_ms > 0


async def test_state_endpoint(hosts: Hosts, client: NATS) -> None:
    await hosts.start(BreakerActor(config(cooldown_s=30)))
    status, data = await state_call(client)
    assert status == 200
    reply = StateReply.model_validate_json(data)
    assert [(s.provider, s.state) for s in reply.states] == [("alpha", "closed"), ("beta", "closed")]
    await open_breaker(client)
    await publish(client, "gamma", "timeout")  # not configured here, but reported by some gateway
    await eventually(lambda: _failures(client, "gamma", 1), timeout_s=3.0, interval_s=0.01)
    reply = StateReply.model_validate_json((await state_call(client))[1])
    assert [(s.provider, s.state) for s in reply.states] == [("alpha", "open"), ("beta", "closed"),
                                                             ("gamma", "closed")]
    assert abs(reply.now_ms - time.time() * 1000) < 5_000
    one = StateReply.model_validate_json((await state_call(client, "alpha"))[1])
    assert [s.provider for s in one.states] == ["alpha"] and one.states[0].retry_at_ms > one.now_ms
    status, data = await state_call(client, "nobody")
    assert status == 404 and ErrorBody.model_validate_json(data).error.code == "unknown_provider"
    status, data = await state_call(client, "bad.name")
    assert status == 400


async def test_state_reports_half_open_before_the_tick_writes_it(hosts: Hosts, client: NATS) -> None:
    await hosts.start(BreakerActor(config(tick_interval_s=60)))
    await open_breaker(client)
    await asyncio.sleep(0.45)
    assert (await stored(client, "alpha")).state == "open"  # type: ignore[union-attr]
    reply = StateReply.model_validate_json((await state_call(client, "alpha"))[1])
    assert reply.states[0].state == "half_open"


async def test_malformed_outcomes_are_ignored(hosts: Hosts, client: NATS) -> None:
    await hosts.start(BreakerActor(config()))
    await client.publish(subjects.breaker_outcome("alpha"), b"{not json")
    await client.publish(subjects.breaker_outcome("alpha"), b'{"provider": "alpha"}')
    await publish(client, "alpha", "timeout")
    await eventually(lambda: _failures(client, "alpha", 1), timeout_s=3.0, interval_s=0.01)


async def test_discovery(hosts: Hosts, client: NATS) -> None:
    await hosts.start(BreakerActor(config()))
    msg = await client.request(f"$SRV.INFO.{subjects.SERVICE_BREAKER}", b"", timeout=2)
    import json

    info = json.loads(msg.data)
    assert info["name"] == subjects.SERVICE_BREAKER and info["description"]
    assert {e["subject"] for e in info["endpoints"]} == {subjects.BREAKER_STATE, subjects.BREAKER_PROBE}
