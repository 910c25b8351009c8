"""Spend events over SSE (own events for an agent, all for the admin, resumable) and their JSON Schemas."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from arbstr.natsserver import NatsServer
from schemas.export import EXPORTED, OUT, render
from tests.support.stack import ADMIN_TOKEN, Stack
from tests.support.vault_helpers import new_agent, settled


@pytest.fixture
def stack(paid_stack: Stack) -> Stack:
    return paid_stack


async def spend(http: aiohttp.ClientSession, stack: Stack, token: str, rid: str) -> None:
    r = await http.post(f"{stack.url}/v1/chat/completions",
                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
                              "max_tokens": 3},
                        headers={"Authorization": f"Bearer {token}", "X-Request-Id": rid})
    assert r.status == 200


async def read_events(resp: aiohttp.ClientResponse, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}

    async def reader() -> None:
        nonlocal current
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("id: "):
                current["id"] = line[4:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
            elif line == "" and "data" in current:
                events.append(current)
                current = {}
                if len(events) >= n:
                    return

    await asyncio.wait_for(reader(), timeout)
    return events


def sse(http: aiohttp.ClientSession, stack: Stack, token: str, **headers: str) -> Any:
    return http.get(f"{stack.url}/v1/spend/events", headers={"Authorization": f"Bearer {token}", **headers})


async def test_agent_sees_its_own_events_and_resumes(http: aiohttp.ClientSession, stack: Stack) -> None:
    a_id, a_tok = await new_agent(http, stack, "a", deposit_msat=1_000_000)
    _, b_tok = await new_agent(http, stack, "b", deposit_msat=1_000_000)
    async with sse(http, stack, a_tok) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        await asyncio.sleep(0.2)
        await spend(http, stack, b_tok, "b-1")  # not a's: never shown to a
        await spend(http, stack, a_tok, "a-1")
        await spend(http, stack, a_tok, "a-2")
        events = await read_events(resp, 2)
    assert [e["data"]["request_id"] for e in events] == ["a-1", "a-2"]
    assert all(e["data"]["agent_id"] == a_id for e in events)
    await settled(http, stack, a_id)
    async with sse(http, stack, a_tok, **{"Last-Event-ID": events[0]["id"]}) as resp:
        again = await read_events(resp, 1)
    assert again[0]["data"]["request_id"] == "a-2" and again[0]["id"] == events[1]["id"]


async def test_admin_sees_every_agent(http: aiohttp.ClientSession, stack: Stack) -> None:
    _, a_tok = await new_agent(http, stack, "a", deposit_msat=1_000_000)
    _, b_tok = await new_agent(http, stack, "b", deposit_msat=1_000_000)
    async with sse(http, stack, ADMIN_TOKEN) as resp:
        await asyncio.sleep(0.2)
        await spend(http, stack, a_tok, "x-1")
        await spend(http, stack, b_tok, "x-2")
        events = await read_events(resp, 2)
    assert {e["data"]["request_id"] for e in events} == {"x-1", "x-2"}


async def test_sse_needs_a_valid_token(http: aiohttp.ClientSession, stack: Stack) -> None:
    r = await http.get(f"{stack.url}/v1/spend/events")
    assert r.status == 401
    r = await http.get(f"{stack.url}/v1/spend/events", headers={"Authorization": "Bearer arb_nobody"})
    assert r.status == 401


async def test_json_schemas_are_generated_and_served(http: aiohttp.ClientSession, stack: Stack) -> None:
    for name, model in EXPORTED.items():
        assert (OUT / f"{name}.json").read_text() == render(model), f"run `python -m schemas.export` ({name})"
    r = await http.get(f"{stack.url}/v1/schemas/spend_event.json")
    assert r.status == 200
    schema = json.loads(await r.read())
    assert "balance_msat" in schema["properties"]
    r = await http.get(f"{stack.url}/v1/schemas/nope.json")
    assert r.status == 404


async def test_arbstr_events_prints_the_history(http: aiohttp.ClientSession, stack: Stack,
                                                fresh_nats: NatsServer) -> None:
    import subprocess
    import sys

    a_id, a_tok = await new_agent(http, stack, "a", deposit_msat=1_000_000)
    await spend(http, stack, a_tok, "h-1")
    await spend(http, stack, a_tok, "h-2")
    await settled(http, stack, a_id)
    await asyncio.sleep(0.2)
    out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "arbstr", "events", "--agent", a_id,
                                                   "--nats", fresh_nats.url], capture_output=True, text=True,
                                  timeout=30)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [e["request_id"] for e in lines] == ["h-1", "h-2"]
