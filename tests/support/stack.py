"""An in-process arbstr stack for tests: real actors on a real nats-server, the gateway on real HTTP."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import nats
from aiohttp import web
from nats.aio.client import Client as NATS

from actors.breaker.actor import BreakerActor
from actors.pricing.actor import PricingActor
from actors.router.actor import RouterActor
from actors.runtime.host import ActorHost
from gateway.app import Gateway
from schemas import subjects
from schemas.bus_permissions import GATEWAY
from schemas.config import Config, parse_config
from tests.support.bus import connect_actor, connect_as


def demo_config(mock_url: str, **overrides: Any) -> Config:
    """Three providers of the same models at 8, 10 and 12 sats per 1k tokens, plus a keyword policy."""
    models = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "max_body_bytes": 64 * 1024},
        "nats": {"request_timeout_s": 2.0},
        "providers": [
            {"name": name, "url": f"{mock_url}/{name}/v1", "models": models, "input_rate": rate,
             "output_rate": rate, "tier": "frontier", "connect_timeout_s": 2, "first_byte_timeout_s": 5}
            for name, rate in (("alpha", 8000), ("beta", 10000), ("gamma", 12000))
        ],
        "policies": [
            {"name": "premium", "keywords": ["legal"], "allowed_models": ["gpt-4o"]},
            {"name": "capped", "keywords": ["cheaply"], "max_input_rate": 9000, "max_output_rate": 9000},
        ],
    }
    for key, value in overrides.items():
        data[key] = value
    return parse_config(data)


async def purge_kv(nc: NATS) -> None:
    """Buckets outlive a stack on the shared server; each stack starts from empty ones."""
    js = nc.jetstream()
    for bucket in (subjects.KV_PRICES, subjects.KV_BREAKERS, subjects.KV_VAULT, subjects.KV_PROVIDER_KEYS):
        try:
            await js.delete_key_value(bucket)
        except Exception:
            pass


@dataclass
class Stack:
    config: Config
    nc: NATS
    url: str
    gateway: Gateway
    runner: web.AppRunner
    hosts: list[ActorHost] = field(default_factory=list)
    routers: list[RouterActor] = field(default_factory=list)
    extra_connections: list[NATS] = field(default_factory=list)
    nats_url: str = ""

    async def add_router(self) -> RouterActor:
        actor = RouterActor(self.config)
        nc = await connect_actor(self.nats_url, actor)
        self.extra_connections.append(nc)
        host = ActorHost(actor, nc)
        await host.start()
        await actor.wait_ready(5)
        self.hosts.append(host)
        self.routers.append(actor)
        return actor

    async def stop_gateway(self) -> None:
        """The gateway first (it gives its grants back while the vault still answers); once."""
        if not getattr(self, "_gateway_stopped", False):
            self._gateway_stopped = True
            await self.runner.cleanup()

    async def stop(self) -> None:
        await self.stop_gateway()
        for host in reversed(self.hosts):
            await host.stop()
        for nc in self.extra_connections:
            await nc.drain()
        await self.nc.drain()


async def start_stack(config: Config, nats_url: str, *, routers: int = 1, meter: Optional[Any] = None,
                      breakers: bool = True,
                      extend: Optional[Callable[[web.Application, Gateway], None]] = None) -> Stack:
    nc = await nats.connect(nats_url)  # the test's own connection (unrestricted on the fixtures' servers)
    await purge_kv(nc)
    # Each component on its own connection, as its own bus identity: a permission it lacks fails the test.
    own: list[NATS] = []
    pricing_actor = PricingActor(config)
    own.append(await connect_actor(nats_url, pricing_actor))
    pricing = ActorHost(pricing_actor, own[-1])
    await pricing.start()
    breaker_hosts: list[ActorHost] = []
    if breakers:
        breaker_actor = BreakerActor(config)
        own.append(await connect_actor(nats_url, breaker_actor))
        breaker_hosts.append(ActorHost(breaker_actor, own[-1]))
        await breaker_hosts[0].start()
    own.append(await connect_as(nats_url, GATEWAY))
    gw = Gateway(config, own[-1], meter=meter)
    app = gw.app()
    if extend is not None:  # routes a test adds beside the gateway's own (before the app freezes)
        extend(app, gw)
    runner = gw.runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stack = Stack(config, nc, f"http://127.0.0.1:{port}", gw, runner, hosts=[pricing, *breaker_hosts],
                  extra_connections=own, nats_url=nats_url)
    for _ in range(routers):
        await stack.add_router()
    return stack


ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


def vault_section(**overrides: Any) -> dict[str, Any]:
    return {"admin_token": ADMIN_TOKEN, "hold_ttl_s": 60, "sweep_interval_s": 0.2, **overrides}


async def add_vault(stack: "Stack", instances: int = 1) -> list[Any]:
    """Start vault actor instances on the stack's connection (each with its own connection, like processes)."""
    from actors.vault.actor import VaultActor

    actors = []
    for _ in range(instances):
        actor = VaultActor(stack.config)
        nc = await connect_actor(stack.nats_url, actor)
        host = ActorHost(actor, nc)
        await host.start()
        stack.hosts.append(host)
        stack.extra_connections.append(nc)
        actors.append(actor)
    return actors
