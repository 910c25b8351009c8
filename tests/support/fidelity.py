"""Helpers of the OpenAI-fidelity suites (conformance, fuzz, storm): a paid stack on its own nats-server and
its own mock upstream, so the faults and the mock's history belong to one module."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import aiohttp
from aiohttp import web

from arbstr.mock_upstream import MockUpstreamServer
from arbstr.natsserver import NatsServer
from gateway.app import Gateway
from gateway.openapi import add_openapi_route
from gateway.responses_relay import add_responses_routes
from schemas.config import Config
from schemas.vault import SpendEvent
from tests.support.stack import Stack, add_vault, demo_config, start_stack, vault_section
from tests.support.vault_helpers import new_agent

PROVIDERS = (("alpha", 8000), ("beta", 10000), ("gamma", 12000))
MODELS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]


def fidelity_routes(app: web.Application, gw: Gateway) -> None:
    """The routes of this work; both functions skip a route the gateway already serves."""
    add_responses_routes(app, gw)
    add_openapi_route(app, gw)


def fidelity_config(mock_url: str, *, paid: bool = True, first_byte_timeout_s: float = 2.0,
                    max_body_bytes: int = 64 * 1024) -> Config:
    providers = [{"name": name, "url": f"{mock_url}/{name}/v1", "models": MODELS, "input_rate": rate,
                  "output_rate": rate, "tier": "frontier", "connect_timeout_s": 1,
                  "first_byte_timeout_s": first_byte_timeout_s} for name, rate in PROVIDERS]
    overrides: dict[str, Any] = {"providers": providers,
                                 "server": {"host": "127.0.0.1", "port": 0, "max_body_bytes": max_body_bytes}}
    if paid:
        overrides["vault"] = vault_section()
    return demo_config(mock_url, **overrides)


@dataclass
class PaidStack:
    stack: Stack
    mock: MockUpstreamServer
    nats: NatsServer
    agent_id: str
    token: str

    @property
    def url(self) -> str:
        return self.stack.url

    async def stop(self) -> None:
        await self.stack.stop()
        await self.mock.stop()
        self.nats.stop(kill=True)


async def start_paid_stack(store: Path, *, deposit_msat: int = 10_000_000_000, history: int = 100,
                           first_byte_timeout_s: float = 2.0, breakers: bool = False) -> PaidStack:
    """Its own nats-server (a clean ledger), its own mock, one vault, one funded agent."""
    nats = NatsServer(store / "nats", log_file=store / "nats.log")
    nats.start()
    mock = await MockUpstreamServer(history=history).start()
    stack = await start_stack(fidelity_config(mock.url, first_byte_timeout_s=first_byte_timeout_s), nats.url,
                              extend=fidelity_routes, breakers=breakers)
    await add_vault(stack)
    async with aiohttp.ClientSession() as http:
        agent_id, token = await new_agent(http, stack, "fidelity", deposit_msat=deposit_msat)
    return PaidStack(stack, mock, nats, agent_id, token)


async def set_faults(mock_url: str, provider: str, faults: Any) -> None:
    async with aiohttp.ClientSession() as http:
        r = await http.post(f"{mock_url}/_mock/{provider}/faults", json=faults)
        assert r.status == 200, await r.text()


async def clear_faults(mock_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for name, _ in PROVIDERS:
            await http.delete(f"{mock_url}/_mock/{name}/faults")


async def mock_stats(mock_url: str, provider: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        return await (await http.get(f"{mock_url}/_mock/{provider}/stats")).json()


class SpendLog:
    """Every spend event of one agent, as published (subscribed before the requests are made)."""

    def __init__(self) -> None:
        self.events: list[SpendEvent] = []
        self._sub: Optional[Any] = None

    async def start(self, nc: Any, subject: str) -> "SpendLog":
        async def on_msg(msg: Any) -> None:
            self.events.append(SpendEvent.model_validate_json(msg.data))

        self._sub = await nc.subscribe(subject, cb=on_msg)
        return self

    async def wait_for(self, request_ids: set[str], timeout_s: float = 20.0) -> dict[str, SpendEvent]:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            seen = {e.request_id: e for e in self.events if e.request_id in request_ids}
            if len(seen) == len(request_ids) or asyncio.get_running_loop().time() > deadline:
                return seen
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
