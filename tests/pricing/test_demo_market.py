"""The demo market `arbstr up` runs with no config, served in-process: a newcomer's first requests show tiers and
price routing at work — `model: "auto"` on "hello there" lands on the local model with a small hold, a hard ask
on the frontier model, a named model at its cheapest seller — and the tier is in the headers and the record."""

from __future__ import annotations

import asyncio
import tomllib
from typing import Any, AsyncIterator
from urllib.parse import urlparse

import aiohttp
import pytest

from arbstr.demo import DEMO_OFFERS, demo_toml
from arbstr.natsserver import NatsServer
from schemas.config import parse_config
from tests.support.stack import ADMIN_TOKEN, Stack, add_vault, start_stack
from tests.support.vault_helpers import ADMIN, new_agent, settled

HARD = ("Prove that every finite integral domain is a field, then design a lock-free concurrent hash map in C++ "
        "with linearizable resize, analyse its memory-ordering requirements step by step, and compare its "
        "amortised complexity with a striped-lock design under heavy write contention.")


@pytest.fixture
async def demo(fresh_nats: NatsServer, mock_upstream: str) -> AsyncIterator[Stack]:
    port = urlparse(mock_upstream).port
    assert port is not None
    data: dict[str, Any] = tomllib.loads(demo_toml(0, port, admin_token=ADMIN_TOKEN))
    data.pop("mock_upstream")  # the session's mock upstream serves every provider path already
    data["vault"].pop("demo_agent")
    stack = await start_stack(parse_config(data), fresh_nats.url)
    await add_vault(stack)
    yield stack
    await stack.stop()


def test_each_model_is_sold_by_two_or_three_providers_at_the_spread() -> None:
    by_model: dict[str, list[int]] = {}
    tiers: dict[str, set[str]] = {}
    for o in DEMO_OFFERS:
        for m in o.models:
            by_model.setdefault(m, []).append(o.input_rate)
            tiers.setdefault(m, set()).add(o.tier)
    assert {t for ts in tiers.values() for t in ts} == {"local", "standard", "frontier"}
    for model, rates in by_model.items():
        assert 2 <= len(rates) <= 3 and len(tiers[model]) == 1, model
        low = min(rates)
        assert all(r * 8 in (low * 8, low * 10, low * 12) for r in rates), (model, rates)
    local, std, top = (min(o.input_rate for o in DEMO_OFFERS if o.tier == t) for t in ("local", "standard", "frontier"))
    assert local * 5 <= std and std * 10 <= top  # list-price ratios, not one price for everything


async def ask(http: aiohttp.ClientSession, stack: Stack, token: str, model: str, text: str
              ) -> tuple[dict[str, str], dict[str, Any]]:
    r = await http.post(f"{stack.url}/v1/chat/completions", headers={"Authorization": f"Bearer {token}"},
                        json={"model": model, "messages": [{"role": "user", "content": text}]})
    body = await r.json()
    assert r.status == 200, body
    return dict(r.headers), body


async def test_first_requests_show_tiers_and_price_routing(http: aiohttp.ClientSession, demo: Stack) -> None:
    agent_id, token = await new_agent(http, demo, "newcomer", deposit_msat=10_000_000)
    auth = {"Authorization": f"Bearer {token}"}
    # The hold of "hello there" on auto: the local model's rates, a few hundred msat — not ~196,000.
    r = await http.post(f"{demo.url}/v1/cost", headers=auth,
                        json={"model": "auto", "messages": [{"role": "user", "content": "hello there"}]})
    est = await r.json()
    assert r.status == 200, est
    assert est["tier"] == "local" and est["candidates"][0]["provider"] == "beta-local", est
    assert est["reserve"]["amount_msat"] < 2_000, est["reserve"]

    hello, body = await ask(http, demo, token, "auto", "hello there")
    assert (hello["x-arbstr-tier"], hello["x-arbstr-provider"]) == ("local", "beta-local")
    assert body["model"] == "llama-3.1-8b"
    hard, body = await ask(http, demo, token, "auto", HARD)
    assert (hard["x-arbstr-tier"], hard["x-arbstr-provider"]) == ("frontier", "gamma-frontier")
    assert body["model"] == "gpt-4o"
    named, _ = await ask(http, demo, token, "gpt-4o-mini", "hello there")
    assert named["x-arbstr-provider"] == "alpha"  # the cheapest of three standard sellers
    assert int(hello["x-arbstr-cost-msat"]) * 20 < int(hard["x-arbstr-cost-msat"])

    await settled(http, demo, agent_id)
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        log = await (await http.get(f"{demo.url}/v1/requests?sort=at&order=asc", headers=ADMIN)).json()
        if log["total"] >= 3:
            break
        assert asyncio.get_running_loop().time() < deadline, log
        await asyncio.sleep(0.1)
    assert [(r["model"], r["tier"], r["provider"], r["upstream_model"]) for r in log["data"]] == [
        ("auto", "local", "beta-local", "llama-3.1-8b"), ("auto", "frontier", "gamma-frontier", "gpt-4o"),
        ("gpt-4o-mini", "local", "alpha", "gpt-4o-mini")]  # the tier the ask needs; the named model is above it
    assert log["data"][0]["predicted_tier"] == "local" and log["data"][1]["predicted_tier"] == "frontier"


async def test_savings_are_measured_against_the_cheapest_single_provider(http: aiohttp.ClientSession,
                                                                         demo: Stack) -> None:
    agent_id, token = await new_agent(http, demo, "saver", deposit_msat=10_000_000)
    await ask(http, demo, token, "auto", "hello there")
    await ask(http, demo, token, "auto", HARD)
    await settled(http, demo, agent_id)
    deadline = asyncio.get_running_loop().time() + 10
    while (await (await http.get(f"{demo.url}/v1/requests?limit=1", headers=ADMIN)).json())["total"] < 2:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    log = (await (await http.get(f"{demo.url}/v1/requests", headers=ADMIN)).json())["data"]
    doc = await (await http.get(f"{demo.url}/v1/stats", headers=ADMIN)).json()
    assert doc["savings_baseline"] == "cheapest_single_provider"
    row = doc["data"][0]
    # Only a frontier offer can serve both asks; the cheapest of them is gamma-frontier's gpt-4o. A client
    # pinning it would have paid both at its rates: that, not the costliest candidate, is what routing saved on.
    pinned = sum(next(p["cost_msat"] for p in r["pinned_costs"]
                      if (p["provider"], p["model"]) == ("gamma-frontier", "gpt-4o")) for r in log)
    assert (row["savings_baseline"], row["baseline_provider"], row["baseline_model"]) == (
        "cheapest_single_provider", "gamma-frontier", "gpt-4o")
    assert row["baseline_msat"] == pinned
    assert row["savings_msat"] == pinned - row["cost_msat"] > 0
    assert row["baseline_msat"] < sum(r["baseline_msat"] for r in log)  # less than the costliest candidates'

    # A named model no other offer serves joins the range: no single provider could have served all three, and
    # the row says which baseline it fell back to.
    await ask(http, demo, token, "gpt-4o-mini", "hello there")
    await settled(http, demo, agent_id)
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        row = (await (await http.get(f"{demo.url}/v1/stats", headers=ADMIN)).json())["data"][0]
        if row["requests"] == 3:
            break
        assert asyncio.get_running_loop().time() < deadline, row
        await asyncio.sleep(0.1)
    assert (row["savings_baseline"], row["baseline_provider"]) == ("costliest_candidate", None)
