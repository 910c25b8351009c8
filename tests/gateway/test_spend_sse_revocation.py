"""Token rotation ends the event streams opened with the old token, on every gateway (issue 12): the vault's
revocation notice ends them at once, and a periodic re-check ends them when core NATS dropped the notice."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import aiohttp
import nats
import pytest
from aiohttp import web

import gateway.events as events_module
from actors.vault.actor import VaultActor
from gateway.app import Gateway
from tests.support.stack import Stack
from tests.gateway.test_spend_sse import read_events, spend
from tests.support.vault_helpers import admin, new_agent


@pytest.fixture
async def two_gateways(paid_stack: Stack) -> AsyncIterator[tuple[Stack, str]]:
    """The stack's gateway and a second one on its own connection, as another process would be."""
    nc = await nats.connect(paid_stack.nc.connected_url.geturl())  # type: ignore[union-attr]
    runner = web.AppRunner(Gateway(paid_stack.config, nc).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield paid_stack, f"http://127.0.0.1:{port}"
    await runner.cleanup()
    await nc.drain()


async def until_closed(resp: aiohttp.ClientResponse, timeout: float) -> list[str]:
    """Every line the stream sends until the server ends it (a TimeoutError if it does not)."""
    lines: list[str] = []

    async def read() -> None:
        async for raw in resp.content:
            lines.append(raw.decode().rstrip("\n"))

    await asyncio.wait_for(read(), timeout)
    return lines


def revoked(lines: list[str]) -> bool:
    frames = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    return "event: error" in lines and frames[-1]["error"]["code"] == "token_revoked"


def open_stream(http: aiohttp.ClientSession, url: str, token: str) -> Any:
    return http.get(f"{url}/v1/spend/events", headers={"Authorization": f"Bearer {token}"})


async def test_rotation_ends_the_old_tokens_streams_on_every_gateway(http, two_gateways) -> None:
    stack, second = two_gateways
    a_id, old = await new_agent(http, stack, "rotated", deposit_msat=1_000_000)
    _, other = await new_agent(http, stack, "bystander", deposit_msat=1_000_000)
    async with open_stream(http, stack.url, old) as s1, open_stream(http, second, old) as s2, \
            open_stream(http, second, other) as s3:
        assert (s1.status, s2.status, s3.status) == (200, 200, 200)
        await asyncio.sleep(0.3)
        await spend(http, stack, old, "before-rotation")
        assert [e["data"]["request_id"] for e in await read_events(s1, 1)] == ["before-rotation"]
        rotated = await admin(http, stack, "POST", f"/v1/admin/agents/{a_id}/token", expect=200)
        # Long before the periodic re-check (30 s): the notice did it.
        for stream in (s1, s2):
            assert revoked(await until_closed(stream, 5.0))
        # Another agent's stream on the same gateway carries on.
        await spend(http, stack, other, "bystander-1")
        assert [e["data"]["request_id"] for e in await read_events(s3, 1)] == ["bystander-1"]
    new = rotated["token"]
    r = await http.get(f"{stack.url}/v1/spend/events", headers={"Authorization": f"Bearer {old}"})
    assert r.status == 401
    async with open_stream(http, second, new) as s4:
        await asyncio.sleep(0.3)
        await spend(http, stack, new, "after-rotation")
        assert [e["data"]["request_id"] for e in await read_events(s4, 1)] == ["after-rotation"]


async def test_a_lost_notice_is_caught_by_the_recheck(http, paid_stack, monkeypatch) -> None:
    async def dropped(self: VaultActor, agent_id: str, token_hash: str, reason: str) -> None:
        return None  # core NATS is at-most-once: the notice may never arrive

    monkeypatch.setattr(VaultActor, "_revoked", dropped)
    monkeypatch.setattr(events_module, "RECHECK_S", 1.0)
    a_id, old = await new_agent(http, paid_stack, "unnoticed", deposit_msat=1_000_000)
    async with open_stream(http, paid_stack.url, old) as stream:
        assert stream.status == 200
        await asyncio.sleep(1.5)  # re-checked once at least: still valid, still open
        assert not stream.content.at_eof()
        await admin(http, paid_stack, "POST", f"/v1/admin/agents/{a_id}/token", expect=200)
        assert revoked(await until_closed(stream, 5.0))
