"""Routing agents' requests to a keyed Routstr node (rebuilt from routstr-core's source) with a real mint and relay:
what the node says it charged is read (``usage.cost`` object, ``X-Routstr-Cost-Msats``, the final usage chunk of a
stream), recorded beside arbstr's own cost, and a drift flagged; the node's billing of arbstr never reaches the
agent. Issue 13, point 3: before, arbstr read none of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from arbstr.natsserver import NatsServer
from tests.support.nostr_relay import NostrRelay, running_relay
from tests.support.nutshell import NutshellMint, OutsideWallet
from tests.support.routstr_market import Market, market
from tests.support.routstr_node import StartNode
from tests.support.routstr_rules import NodeModel, token_cost
from tests.support.waiting import eventually
from tests.support.vault_helpers import bearer

CHEAP = NodeModel(0.001, 0.003, context_length=8192, max_completion_tokens=4096)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NostrRelay]:
    yield from running_relay(tmp_path_factory, "routing-relay")


async def record(m: Market, request_id: str) -> dict[str, Any]:
    """The request's record as the vault projected it (GET /v1/requests, the agent's own)."""
    found: dict[str, Any] = {}

    async def seen() -> bool:
        async with m.http.get(f"{m.stack.url}/v1/requests?limit=50", headers=bearer(m.agent)) as r:
            for item in (await r.json()).get("data", []):
                if item["request_id"] == request_id:
                    found.update(item)
                    return True
        return False
    await eventually(seen, what="the request record", timeout_s=15.0)
    return found


async def test_point3_the_nodes_charge_is_recorded_beside_ours_and_a_drift_flagged(
        http: aiohttp.ClientSession, fresh_nats: NatsServer, mock_upstream: str, nutshell_mint: NutshellMint,
        outside: OutsideWallet, tmp_path: Path, relay: NostrRelay, routstr_nodes: StartNode) -> None:
    node = await routstr_nodes({"a-model": CHEAP})
    async with market(http, fresh_nats, mock_upstream, nutshell_mint, outside, tmp_path, relay,
                      topup={"x_cashu": False}) as m:
        name, key = await m.seeded(node, 100)
        status, body, headers = await m.chat("a-model", "what does it cost", max_tokens=20)
        assert status == 200 and headers["x-arbstr-provider"] == name, body
        charged = token_cost(CHEAP, 4 + 3, 7).total_msats  # words (+3 per message) in, 7 words out
        assert key.total_spent == charged
        # The node's billing of arbstr (its charge, our balance there) is not relayed to the agent.
        assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
        assert "cost" not in body and "routstr" not in body.get("metadata", {})
        rec = await record(m, headers["x-request-id"])
        assert rec["provider_cost_msat"] == charged and rec["cost_msat"] == int(headers["x-arbstr-cost-msat"])
        assert rec["cost_drift"] is False

        # The upstream reports a USD cost: the node bills that (0.5 sat here), far from arbstr's token price.
        node.knobs.usd_cost = 0.0005
        status, body, headers = await m.chat("a-model", "what does it cost now", max_tokens=20)
        assert status == 200
        rec = await record(m, headers["x-request-id"])
        assert rec["provider_cost_msat"] == 500 and rec["cost_drift"] is True
        node.knobs.usd_cost = None

        # A stream: no cost headers, the node's final usage chunk carries the cost; the agent sees arbstr's.
        async with http.post(f"{m.stack.url}/v1/chat/completions", headers=bearer(m.agent),
                             json={"model": "a-model", "messages": [{"role": "user", "content": "stream"}],
                                   "max_tokens": 20, "stream": True, "stream_options": {"include_usage": True}}) as r:
            assert r.status == 200
            frames = [line[6:] for line in (await r.text()).splitlines() if line.startswith("data: ")]
            request_id = r.headers["x-request-id"]
        assert frames[-1] == "[DONE]"
        usage = json.loads(frames[-2])["usage"]
        assert "cost" not in usage and "remaining_balance_msats" not in usage and usage["cost_msat"] > 0
        rec = await record(m, request_id)
        assert rec["streamed"] and rec["provider_cost_msat"] == token_cost(CHEAP, 1 + 3, 4).total_msats
        await m.clean_books()


async def test_nothing_a_node_redirects_is_followed(
        http: aiohttp.ClientSession, fresh_nats: NatsServer, mock_upstream: str, nutshell_mint: NutshellMint,
        outside: OutsideWallet, tmp_path: Path, relay: NostrRelay, routstr_nodes: StartNode) -> None:
    """A key, a token or a prompt sent to a node never follows its Location header to another host: neither the
    gateway's request nor the vault's key creation."""
    node = await routstr_nodes({"a-model": CHEAP})
    grabber = await routstr_nodes({"a-model": CHEAP, "b-model": CHEAP}, name="grabber")
    sly = await routstr_nodes({"b-model": CHEAP}, name="sly")
    sly.knobs.redirect_to, sly.knobs.redirect_prefix = grabber.url, "/v1/balance"
    async with market(http, fresh_nats, mock_upstream, nutshell_mint, outside, tmp_path, relay,
                      topup={"x_cashu": False}) as m:
        name, _ = await m.seeded(node, 50)
        node.knobs.redirect_to = grabber.url
        status, body, _ = await m.chat("a-model", "follow me", max_tokens=20)
        assert status == 502, body
        await m.announce(sly, "sly")
        rounds = m.rig.actor.topups.rounds
        await eventually(lambda: _later(m, rounds + 10), what="ten top-up rounds", timeout_s=15.0)
        assert not grabber.hits and not sly.keys and sly.hits  # sly was asked; nothing followed it
        await m.clean_books()


async def _later(m: Market, rounds: int) -> bool:
    return m.rig.actor.topups.rounds >= rounds
