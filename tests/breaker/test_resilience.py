"""Failing providers, end to end: breakers open on every gateway, traffic moves with no client-visible error,
one probe closes a breaker after its cool-down, all breakers open is a 503 with retry-after, and streams fall
over only before their first byte.

Real nats-server (one per test, so breaker states start empty), real actors, real HTTP, the mock upstream with
injected faults. The providers here have names of their own, so other test files' faults never reach them.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

import aiohttp
import nats
import orjson
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS

from actors.breaker.actor import BreakerActor
from actors.router.rank import route
from actors.runtime.host import ActorHost
from arbstr.natsserver import NatsServer
from gateway.app import Gateway
from schemas.breaker import BreakerState
from schemas.config import Config, parse_config
from schemas.pricing import ProviderPrices
from schemas.router import RouteRequest
from tests.support.stack import Stack, start_stack
from tests.support.breakers import stored
from tests.support.waiting import eventually

PROVIDERS = ("res_a", "res_b", "res_c")  # cheapest first
CHAT = [{"role": "user", "content": "Hello there, how are you?"}]


def config(names: tuple[str, ...] = PROVIDERS, **breaker: Any) -> Config:
    def url(name: str) -> str:
        return f"{MOCK_URL[0]}/{name}/v1"

    return parse_config({
        "server": {"host": "127.0.0.1", "port": 0},
        "nats": {"request_timeout_s": 2.0},
        "breaker": {"failure_threshold": 3, "cooldown_s": 0.6, "probe_timeout_s": 5, "tick_interval_s": 0.05,
                    **breaker},
        "providers": [{"name": n, "url": url(n), "models": ["gpt-4o-mini"], "input_rate": 1000 * (i + 1),
                       "output_rate": 1000 * (i + 1), "connect_timeout_s": 2, "first_byte_timeout_s": 5}
                      for i, n in enumerate(names)],
    })


MOCK_URL: list[str] = []


@pytest.fixture(autouse=True)
async def mock(mock_upstream: str) -> AsyncIterator[str]:
    MOCK_URL[:] = [mock_upstream]
    await reset(mock_upstream)
    yield mock_upstream
    await reset(mock_upstream)


async def reset(mock_upstream: str) -> None:
    async with aiohttp.ClientSession() as s:
        for p in PROVIDERS:
            await s.delete(f"{mock_upstream}/_mock/{p}/faults")
            await s.delete(f"{mock_upstream}/_mock/{p}/stats")


class Stacks:
    """Stacks and extra gateways started by a test; all stopped at teardown."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stacks: list[Stack] = []
        self.cleanups: list[Callable[[], Awaitable[None]]] = []

    async def start(self, cfg: Config, **kw: Any) -> Stack:
        s = await start_stack(cfg, self.url, **kw)
        self.stacks.append(s)
        return s

    async def gateway(self, cfg: Config) -> str:
        """Another gateway instance on its own connection, as a second process would be."""
        nc = await nats.connect(self.url)
        runner = web.AppRunner(Gateway(cfg, nc).app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        async def stop() -> None:
            await runner.cleanup()
            await nc.drain()

        self.cleanups.append(stop)
        return f"http://127.0.0.1:{port}"

    async def breaker(self, cfg: Config) -> Callable[[], Awaitable[None]]:
        """A breaker actor on its own connection; returns the function that stops it (as a crash would)."""
        nc = await nats.connect(self.url)
        host = ActorHost(BreakerActor(cfg), nc)
        await host.start()
        stopped = False

        async def stop() -> None:
            nonlocal stopped
            if not stopped:
                stopped = True
                await host.stop()
                await nc.drain()

        self.cleanups.append(stop)
        return stop

    async def stop_all(self) -> None:
        for cleanup in reversed(self.cleanups):
            await cleanup()
        for s in reversed(self.stacks):
            await s.stop()


@pytest.fixture
async def stacks(fresh_nats: NatsServer) -> AsyncIterator[Stacks]:
    s = Stacks(fresh_nats.url)
    yield s
    await s.stop_all()


# --- helpers ------------------------------------------------------------------------------------------------------
async def set_fault(mock_url: str, provider: str, fault: Any) -> None:
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{mock_url}/_mock/{provider}/faults", json=fault)
        assert r.status < 300, await r.text()


async def received(mock_url: str, provider: str) -> int:
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"{mock_url}/_mock/{provider}/stats")
        return int((await r.json())["requests"])


async def chat(http: aiohttp.ClientSession, url: str, body: Optional[dict[str, Any]] = None,
               headers: Optional[dict[str, str]] = None) -> tuple[aiohttp.ClientResponse, Any]:
    r = await http.post(f"{url}/v1/chat/completions", json=body or {"model": "gpt-4o-mini", "messages": CHAT},
                        headers=headers or {})
    data = await r.read()
    return r, orjson.loads(data) if data else None


async def stream(http: aiohttp.ClientSession, url: str) -> tuple[aiohttp.ClientResponse, list[bytes]]:
    r = await http.post(f"{url}/v1/chat/completions",
                        json={"model": "gpt-4o-mini", "messages": CHAT, "stream": True, "max_tokens": 6})
    frames = []
    async for line in r.content:
        line = line.strip()
        if line.startswith(b"data:"):
            frames.append(line[5:].strip())
    return r, frames


def state_is(nc: NATS, provider: str, state: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        s = await stored(nc, provider)
        return s is not None and s.state == state
    return check


def routers_see(stack: Stack, provider: str, state: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return all(r.breakers.get(provider) is not None and r.breakers[provider].state == state
                   for r in stack.routers)
    return check


async def open_by_failures(http: aiohttp.ClientSession, stack: Stack, mock_url: str, provider: str = "res_a"
                           ) -> None:
    """Three 5xx from ``provider`` (the cheapest), each hidden from the client by a fallback; then it is open."""
    await set_fault(mock_url, provider, {"status": 500, "count": 3})
    for _ in range(3):
        r, body = await chat(http, stack.url)
        assert r.status == 200, body
        assert r.headers["x-arbstr-retries"] == "1"
    await eventually(routers_see(stack, provider, "open"), timeout_s=3.0, interval_s=0.01)


# --- the router's side: which candidates need a probe ---------------------------------------------------------------
NOW = 1_700_000_000_000


def test_router_marks_recovering_providers_as_probe_candidates() -> None:
    prices = [ProviderPrices(provider=n, tier=t, models=["m"], input_rate=r, output_rate=r)  # type: ignore[arg-type]
              for n, t, r in (("loc", "local", 0), ("std", "standard", 10), ("top", "frontier", 90))]
    req = RouteRequest(request_id="q", model="m", input_tokens=10)
    breakers = {"loc": BreakerState(provider="loc", state="half_open"),
                "std": BreakerState(provider="std", state="open", retry_at_ms=NOW),  # cool-down just over
                "top": BreakerState(provider="top", state="closed", consecutive_failures=2)}
    reply = route(req, prices, breakers, Config(), NOW)
    assert [(c.provider, c.probe) for c in reply.candidates] == [("loc", True), ("std", True), ("top", False)]
    # A hard request whose only frontier provider is recovering waits for its probe: never served below the tier.
    hard = req.model_copy(update={"complexity": None, "input_tokens": 20_000,
                                  "text_sample": "Prove step by step and analyze: ```x``` see src/a.py"})
    reply = route(hard, prices, {"top": BreakerState(provider="top", state="half_open")}, Config(), NOW)
    assert reply.tier == "frontier" and [(c.provider, c.probe) for c in reply.candidates] == [("top", True)]


# --- breakers open, traffic moves -----------------------------------------------------------------------------------
async def test_failing_provider_opens_on_every_gateway_and_traffic_moves_without_errors(
        stacks: Stacks, http: aiohttp.ClientSession, mock: str) -> None:
    cfg = config(cooldown_s=30)
    stack = await stacks.start(cfg, routers=2)
    other = await stacks.gateway(cfg)
    await set_fault(mock, "res_a", {"status": 502})  # down until cleared
    seen = []
    for i in range(3):  # the failures that open the breaker, spread over both gateways
        r, body = await chat(http, stack.url if i % 2 == 0 else other)
        assert r.status == 200, body
        seen.append((r.headers["x-arbstr-provider"], r.headers["x-arbstr-retries"], r.headers["x-arbstr-tried"]))
    assert seen == [("res_b", "1", "res_a")] * 3
    await eventually(routers_see(stack, "res_a", "open"), timeout_s=3.0, interval_s=0.01)
    state = await stored(stack.nc, "res_a")
    assert state is not None and state.consecutive_failures == 3 and state.last_error == "http_5xx (HTTP 502)"
    sent_before = await received(mock, "res_a")
    for url in (stack.url, other) * 5:
        r, body = await chat(http, url)
        assert r.status == 200, body
        assert (r.headers["x-arbstr-provider"], r.headers["x-arbstr-retries"]) == ("res_b", "0")
    assert await received(mock, "res_a") == sent_before  # no request reached the open provider


async def test_after_the_cooldown_one_probe_closes_the_breaker(stacks: Stacks, http: aiohttp.ClientSession,
                                                               mock: str) -> None:
    stack = await stacks.start(config(cooldown_s=2.0))
    await open_by_failures(http, stack, mock)
    r, _ = await chat(http, stack.url)
    assert r.headers["x-arbstr-provider"] == "res_b"  # still open
    await asyncio.sleep(2.05)
    r, body = await chat(http, stack.url)  # the fault is used up: the probe succeeds
    assert r.status == 200, body
    assert (r.headers["x-arbstr-provider"], r.headers["x-arbstr-retries"]) == ("res_a", "0")
    await eventually(state_is(stack.nc, "res_a", "closed"), timeout_s=3.0, interval_s=0.01)
    await eventually(routers_see(stack, "res_a", "closed"), timeout_s=3.0, interval_s=0.01)
    r, _ = await chat(http, stack.url)
    assert r.headers["x-arbstr-provider"] == "res_a"


async def test_a_failed_probe_opens_the_breaker_again(stacks: Stacks, http: aiohttp.ClientSession,
                                                      mock: str) -> None:
    stack = await stacks.start(config(cooldown_s=2.0))
    await open_by_failures(http, stack, mock)
    opened = await stored(stack.nc, "res_a")
    await asyncio.sleep(2.05)
    await set_fault(mock, "res_a", {"status": 503, "count": 1})
    r, body = await chat(http, stack.url)
    assert r.status == 200 and r.headers["x-arbstr-provider"] == "res_b"  # the probe failed: fell over

    async def reopened() -> bool:
        s = await stored(stack.nc, "res_a")
        return s is not None and s.state == "open" and opened is not None and s.opened_at_ms > opened.opened_at_ms

    await eventually(reopened, timeout_s=3.0, interval_s=0.01)


async def test_concurrent_requests_during_half_open_send_one_probe(stacks: Stacks, http: aiohttp.ClientSession,
                                                                   mock: str) -> None:
    stack = await stacks.start(config(cooldown_s=2.0), routers=2)
    other = await stacks.gateway(stack.config)
    await open_by_failures(http, stack, mock)
    await set_fault(mock, "res_a", {"delay_ms": 3000})  # healthy again, but slow: the probe stays in flight
    before = await received(mock, "res_a")
    await asyncio.sleep(2.05)
    results = await asyncio.gather(*(chat(http, stack.url if i % 2 else other) for i in range(24)))
    assert all(r.status == 200 for r, _ in results), [b for r, b in results if r.status != 200]
    providers = [r.headers["x-arbstr-provider"] for r, _ in results]
    assert providers.count("res_a") == 1, providers
    assert providers.count("res_b") == 23
    assert await received(mock, "res_a") - before == 1  # the provider itself saw exactly one request
    await eventually(state_is(stack.nc, "res_a", "closed"), timeout_s=3.0, interval_s=0.01)


async def test_all_breakers_open_is_503_with_retry_after(stacks: Stacks, http: aiohttp.ClientSession,
                                                         mock: str) -> None:
    stack = await stacks.start(config(cooldown_s=20))
    for p in PROVIDERS:
        await set_fault(mock, p, {"status": 500})
    for _ in range(3):  # every provider fails three times: each request tries all of them
        r, body = await chat(http, stack.url)
        assert r.status == 502 and r.headers["x-arbstr-retries"] == "3"
    for p in PROVIDERS:
        await eventually(routers_see(stack, p, "open"), timeout_s=3.0, interval_s=0.01)
    sent = [await received(mock, p) for p in PROVIDERS]
    r, body = await chat(http, stack.url)
    assert r.status == 503, body
    assert body["error"]["code"] == "no_provider_available" and "circuit open" in body["error"]["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 20
    assert [await received(mock, p) for p in PROVIDERS] == sent


async def test_a_probe_is_never_sent_without_the_breaker(stacks: Stacks, http: aiohttp.ClientSession,
                                                         mock: str) -> None:
    """With the breaker actor gone, nobody can hand out the probe slot: the recovering provider is skipped."""
    cfg = config(cooldown_s=0.4)
    stack = await stacks.start(cfg, breakers=False)
    stop_breaker = await stacks.breaker(cfg)
    await open_by_failures(http, stack, mock)
    await stop_breaker()
    await asyncio.sleep(0.45)
    before = await received(mock, "res_a")
    r, body = await chat(http, stack.url)
    assert r.status == 200, body
    assert (r.headers["x-arbstr-provider"], r.headers["x-arbstr-retries"]) == ("res_b", "0")
    assert await received(mock, "res_a") == before


async def test_a_lone_recovering_provider_busy_with_its_probe_is_503_with_retry_after(
        stacks: Stacks, http: aiohttp.ClientSession, mock: str) -> None:
    stack = await stacks.start(config(("res_a",), cooldown_s=2.0))
    await set_fault(mock, "res_a", [{"status": 500, "count": 3}, {"delay_ms": 3000}])
    for _ in range(3):
        r, _ = await chat(http, stack.url)
        assert r.status == 502
    await eventually(routers_see(stack, "res_a", "open"), timeout_s=3.0, interval_s=0.01)
    await asyncio.sleep(2.05)
    probe = asyncio.create_task(chat(http, stack.url))
    await eventually(lambda: _received_at_least(mock, "res_a", 4), timeout_s=3.0, interval_s=0.01)  # the probe is at the provider
    r, body = await chat(http, stack.url)
    assert r.status == 503, body
    assert body["error"]["code"] == "no_provider_available"
    assert 1 <= int(r.headers["retry-after"]) <= 5
    r, body = await probe
    assert r.status == 200 and r.headers["x-arbstr-provider"] == "res_a"


async def _received_at_least(mock: str, provider: str, n: int) -> bool:
    return await received(mock, provider) >= n


# --- streams ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", [
    {"status": 500, "count": 1},
    {"status": 429, "count": 1, "retry_after": 9},
    {"drop_connection": True, "count": 1},
])
async def test_stream_falls_over_when_the_first_candidate_refuses_before_any_byte(
        stacks: Stacks, http: aiohttp.ClientSession, mock: str, fault: dict[str, Any]) -> None:
    stack = await stacks.start(config(cooldown_s=30))
    await set_fault(mock, "res_a", fault)
    r, frames = await stream(http, stack.url)
    assert r.status == 200
    assert (r.headers["x-arbstr-provider"], r.headers["x-arbstr-retries"]) == ("res_b", "1")
    assert frames[-1] == b"[DONE]" and frames.count(b"[DONE]") == 1
    text = "".join(orjson.loads(f)["choices"][0]["delta"].get("content") or "" for f in frames[:-1])
    assert text
    if "retry_after" in fault:  # a 429 opens the breaker at once, for as long as the provider asked
        await eventually(state_is(stack.nc, "res_a", "open"), timeout_s=3.0, interval_s=0.01)
        s = await stored(stack.nc, "res_a")
        assert s is not None and s.retry_at_ms - s.opened_at_ms == 9_000


async def test_stream_cut_after_the_first_byte_ends_with_an_error_event_and_counts_as_a_failure(
        stacks: Stacks, http: aiohttp.ClientSession, mock: str) -> None:
    stack = await stacks.start(config(cooldown_s=30))
    await set_fault(mock, "res_a", {"cut_after_chunks": 2, "count": 1})
    r, frames = await stream(http, stack.url)
    assert r.status == 200 and r.headers["x-arbstr-provider"] == "res_a"  # no fallback after the first byte
    assert b"[DONE]" not in frames
    last = orjson.loads(frames[-1])
    assert set(last) == {"error"} and last["error"]["message"]
    assert await received(mock, "res_b") == 0

    async def counted() -> bool:
        s = await stored(stack.nc, "res_a")
        return s is not None and s.consecutive_failures == 1 and s.last_error is not None \
            and s.last_error.startswith("cut")

    await eventually(counted, timeout_s=3.0, interval_s=0.01)
