"""Spend events for other tools, and secrets kept out of logs."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from schemas import subjects
from schemas.vault import SpendEvent
from tests.support.stack import ADMIN_TOKEN, Stack
from tests.support.vault_helpers import new_agent, settled

CHAT = [{"role": "user", "content": "events please"}]


@pytest.fixture
def stack(paid_stack: Stack) -> Stack:
    return paid_stack  # the demo stack in paid mode (tests/conftest.py)


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


async def test_a_durable_subscriber_from_the_readme_resumes_after_its_restart(
        http: aiohttp.ClientSession, stack: Stack) -> None:
    """The README's few lines of nats-py: every spend event, in order, across a restart of the tool itself."""
    import json as _json

    agent_id, token = await new_agent(http, stack, "followed", deposit_msat=1_000_000)

    async def spend(rid: str) -> None:
        r = await http.post(f"{stack.url}/v1/chat/completions",
                            json={"model": "gpt-4o-mini", "messages": CHAT, "max_tokens": 3},
                            headers={"Authorization": f"Bearer {token}", "X-Request-Id": rid})
        assert r.status == 200

    js = stack.nc.jetstream()
    seen: list[str] = []

    async def run_tool(n: int) -> None:
        sub = await js.subscribe("arbstr.v1.spend.>", durable="my-tool", stream="ARBSTR_EVENTS")
        for _ in range(n):
            msg = await sub.next_msg(timeout=5)
            seen.append(_json.loads(msg.data)["request_id"])
            await msg.ack()
        await sub.unsubscribe()  # the tool stops; its durable consumer stays

    await spend("t-1")
    await spend("t-2")
    await run_tool(2)
    await spend("t-3")  # while the tool is down
    await spend("t-4")
    await settled(http, stack, agent_id)
    await run_tool(2)
    assert seen == ["t-1", "t-2", "t-3", "t-4"]


async def test_metrics_show_vault_operations_and_group_commit(http: aiohttp.ClientSession, stack: Stack) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    agent_id, token = await new_agent(http, stack, "metered", deposit_msat=1_000_000)
    r = await http.post(f"{stack.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": CHAT},
                        headers={"Authorization": f"Bearer {token}"})
    assert r.status == 200
    await settled(http, stack, agent_id)
    await stack.gateway.metrics._poll_once(stack.nc)
    text = await (await http.get(f"{stack.url}/metrics")).text()
    commit = {s.labels["figure"]: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
              if s.name == "arbstr_vault_group_commit"}
    assert commit["partitions"] == 16 and commit["batches"] >= 1 and commit["journaled"] >= commit["batches"] > 0
    ops = [s for fam in text_string_to_metric_families(text) for s in fam.samples
           if s.name == "arbstr_vault_operations" and s.labels["endpoint"] in ("reserve", "grant")]
    assert ops and ops[0].value >= 1
