"""``POST /v1/completions`` is billed like chat: the charge is what the upstream's usage says at the provider's
configured rates (plain and streamed), the agent pays exactly that, and the books balance."""

from __future__ import annotations

import json

import aiohttp

from schemas.money import cost_msat
from tests.support.stack import Stack
from tests.support.vault_helpers import assert_balanced, books, new_agent, settled

ALPHA_RATE = 8000  # tests/support/stack.py demo_config: alpha, the cheapest, at 8,000 sats per 1M tokens in and out


async def test_completions_are_charged_the_upstream_usage_at_the_configured_rates(
        http: aiohttp.ClientSession, paid_stack: Stack) -> None:
    agent_id, token = await new_agent(http, paid_stack, "completer", deposit_msat=5_000_000)
    auth = {"Authorization": f"Bearer {token}"}
    r = await http.post(f"{paid_stack.url}/v1/completions", headers=auth,
                        json={"model": "gpt-4o-mini", "prompt": "Once upon a time", "max_tokens": 20})
    body = await r.json()
    assert r.status == 200, body
    usage = body["usage"]
    expected = cost_msat(usage["prompt_tokens"], usage["completion_tokens"], ALPHA_RATE, ALPHA_RATE)
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert r.headers["x-arbstr-provider"] == "alpha"
    assert int(r.headers["x-arbstr-cost-msat"]) == expected

    r = await http.post(f"{paid_stack.url}/v1/completions", headers=auth,
                        json={"model": "gpt-4o-mini", "prompt": "Count to five:", "max_tokens": 20, "stream": True,
                              "stream_options": {"include_usage": True}})
    text = (await r.read()).decode()
    assert r.status == 200, text
    frames = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    final = next(f["usage"] for f in frames if f.get("usage"))
    streamed = cost_msat(final["prompt_tokens"], final["completion_tokens"], ALPHA_RATE, ALPHA_RATE)
    assert final["cost_msat"] == streamed and text.rstrip().endswith("data: [DONE]")

    account = await settled(http, paid_stack, agent_id)
    assert account["pending_msat"] == 0
    assert account["spent_msat"] == expected + streamed
    assert account["balance_msat"] == 5_000_000 - expected - streamed
    assert_balanced(await books(http, paid_stack))
