"""Spend events for other tools, and secrets kept out of logs."""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import aiohttp
import pytest

from arbstr.natsserver import NatsServer
from schemas import subjects
from schemas.vault import SpendEvent
from tests.stack import ADMIN_TOKEN, Stack, add_vault, demo_config, start_stack, vault_section
from tests.vault_helpers import new_agent, settled

CHAT = [{"role": "user", "content": "events please"}]


@pytest.fixture
async def stack(fresh_nats: NatsServer, mock_upstream: str) -> AsyncIterator[Stack]:
    config = demo_config(mock_upstream, vault=vault_section())
    s = await start_stack(config, fresh_nats.url)
    await add_vault(s)
    yield s
    await s.stop()


async def test_spend_event_per_settle_live_and_replayable(http: aiohttp.ClientSession, stack: Stack) -> None:
    agent_id, token = await new_agent(http, stack, "watched", deposit_msat=1_000_000)
    live: list[SpendEvent] = []

    async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
        live.append(SpendEvent.model_validate_json(msg.data))

    sub = await stack.nc.subscribe(subjects.spend(agent_id), cb=on_msg)
    costs = []
    for i in range(3):
        r = await http.post(f"{stack.url}/v1/chat/completions",
                            json={"model": "gpt-4o-mini", "messages": CHAT, "max_tokens": 5},
                            headers={"Authorization": f"Bearer {token}", "X-Request-Id": f"ev-{i}"})
        assert r.status == 200
        costs.append(int(r.headers["x-arbstr-cost-msat"]))
    await settled(http, stack, agent_id)
    for _ in range(50):
        if len(live) >= 3:
            break
        await asyncio.sleep(0.05)
    await sub.unsubscribe()
    assert [e.request_id for e in live] == ["ev-0", "ev-1", "ev-2"]
    assert [e.cost_msat for e in live] == costs
    assert all(e.kind == "settled" and e.provider == "alpha" and e.model == "gpt-4o-mini" for e in live)
    assert live[-1].balance_msat == 1_000_000 - sum(costs)
    # the ARBSTR_EVENTS stream kept them: a tool that starts later replays from the beginning
    js = stack.nc.jetstream()
    replay = await js.subscribe(subjects.spend(agent_id), ordered_consumer=True, stream=subjects.STREAM_EVENTS)
    got = [SpendEvent.model_validate_json((await replay.next_msg(timeout=2)).data) for _ in range(3)]
    await replay.unsubscribe()
    assert [e.event_id for e in got] == [e.event_id for e in live]


async def test_no_token_or_secret_in_logs(http: aiohttp.ClientSession, stack: Stack,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    agent_id, token = await new_agent(http, stack, "secretive", deposit_msat=1_000_000)
    await http.post(f"{stack.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": CHAT},
                    headers={"Authorization": f"Bearer {token}"})
    await http.post(f"{stack.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": CHAT},
                    headers={"Authorization": "Bearer arb_wrong-token-value-123"})
    await http.get(f"{stack.url}/v1/admin/agents", headers={"Authorization": "Bearer wrong-admin"})
    await settled(http, stack, agent_id)
    text = caplog.text + "".join(repr(r.args) for r in caplog.records)
    for secret in (token, ADMIN_TOKEN, "arb_wrong-token-value-123", "wrong-admin"):
        assert secret not in text
