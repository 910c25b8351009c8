"""Paid mode end to end: agents, tokens, reserve → settle, every error status, approvals, books."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from arbstr.natsserver import NatsServer
from schemas.money import cost_msat
from schemas.tokens import estimate_messages_tokens
from tests.support.stack import Stack, add_vault, demo_config, start_stack, vault_section
from tests.breaker.test_resilience import received
from tests.support.vault_helpers import admin, assert_balanced, books, new_agent, settled

CHAT = [{"role": "user", "content": "Hello there, how are you?"}]


@pytest.fixture
def stack(paid_stack: Stack) -> Stack:
    return paid_stack  # the demo stack in paid mode (tests/conftest.py)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def chat(http: aiohttp.ClientSession, stack: Stack, token: str | None, **body: Any
               ) -> tuple[aiohttp.ClientResponse, Any]:
    payload = {"model": "gpt-4o-mini", "messages": CHAT, **body}
    r = await http.post(f"{stack.url}/v1/chat/completions", json=payload, headers=bearer(token) if token else {})
    return r, await r.json()


async def test_paid_request_is_reserved_and_settled(http, stack) -> None:
    agent_id, token = await new_agent(http, stack, "alice", deposit_msat=1_000_000)
    assert token.startswith("arb_") and len(token) >= 40
    r, body = await chat(http, stack, token, max_tokens=20)
    assert r.status == 200, body
    cost = int(r.headers["x-arbstr-cost-msat"])
    assert cost == cost_msat(body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"], 8000, 8000)
    acct = await settled(http, stack, agent_id)
    assert acct["spent_msat"] == cost
    assert acct["balance_msat"] == 1_000_000 - cost
    me = await (await http.get(f"{stack.url}/v1/vault/me", headers=bearer(token))).json()
    assert me["agent_id"] == agent_id and me["spent_msat"] == cost
    hist = await (await http.get(f"{stack.url}/v1/vault/me/history", headers=bearer(token))).json()
    kinds = [i["kind"] for i in hist["data"]]
    assert "settled" in kinds and "reserved" in kinds and "deposited" in kinds
    assert_balanced(await books(http, stack))


async def test_output_cap_when_client_sets_no_max_tokens(http, stack, mock_upstream) -> None:
    agent_id, token = await new_agent(http, stack, "capped", deposit_msat=50_000)
    r, body = await chat(http, stack, token)
    assert r.status == 200, body
    cap = int(r.headers["x-arbstr-max-tokens"])
    assert cap >= 1
    stats = await (await http.get(f"{mock_upstream}/_mock/alpha/stats")).json()
    assert stats["recent_requests"][-1]["max_tokens"] == cap
    await settled(http, stack, agent_id)
    assert_balanced(await books(http, stack))


async def test_missing_and_bad_tokens_are_401(http, stack) -> None:
    r, body = await chat(http, stack, None)
    assert r.status == 401 and body["error"]["type"] == "authentication_error"
    r, body = await chat(http, stack, "arb_not-a-real-token")
    assert r.status == 401


async def test_insufficient_balance_is_402_and_not_retried(http, stack) -> None:
    _, token = await new_agent(http, stack, "poor", deposit_msat=10)
    r, body = await chat(http, stack, token, max_tokens=100)
    assert r.status == 402, body
    assert r.headers["x-should-retry"] == "false"
    assert body["error"]["code"] == "insufficient_balance"


async def test_max_tx_is_403_and_daily_limit_is_429(http, stack) -> None:
    _, token = await new_agent(http, stack, "limited", deposit_msat=10_000_000,
                               policy={"max_tx_msat": 5_000, "daily_limit_msat": 1_500})
    r, body = await chat(http, stack, token, max_tokens=2000)  # hold ≈ 24k msat > max_tx
    assert r.status == 403, body
    assert body["error"]["code"] == "max_tx_exceeded"
    statuses = []
    for _ in range(20):
        r, body = await chat(http, stack, token, max_tokens=30)
        statuses.append(r.status)
        if r.status == 429:
            assert body["error"]["code"] == "daily_limit_exceeded"
            assert int(r.headers["retry-after"]) > 0
            break
    assert 429 in statuses and statuses[0] == 200


async def test_vault_unreachable_is_503(http, mock_upstream, fresh_nats) -> None:
    config = demo_config(mock_upstream, vault=vault_section())
    s = await start_stack(config, fresh_nats.url)  # no vault instance
    try:
        r = await http.post(f"{s.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": CHAT},
                            headers=bearer("arb_whatever"))
        assert r.status == 503
        assert (await r.json())["error"]["code"] == "actor_unavailable"
    finally:
        await s.stop()


async def test_admin_endpoints_refuse_agent_tokens(http, stack) -> None:
    _, token = await new_agent(http, stack, "mallory", deposit_msat=1000)
    r = await http.get(f"{stack.url}/v1/admin/agents", headers=bearer(token))
    assert r.status == 403
    r = await http.get(f"{stack.url}/v1/admin/agents")
    assert r.status == 401
    r = await http.get(f"{stack.url}/v1/admin/agents", headers=bearer("wrong"))
    assert r.status == 401
    r = await http.post(f"{stack.url}/v1/admin/agents/whatever/deposits", json={"amount_msat": 5},
                        headers=bearer(token))
    assert r.status == 403


async def test_agents_see_only_their_own_account(http, stack) -> None:
    a_id, a_tok = await new_agent(http, stack, "a", deposit_msat=1000)
    b_id, b_tok = await new_agent(http, stack, "b", deposit_msat=2000)
    a = await (await http.get(f"{stack.url}/v1/vault/me", headers=bearer(a_tok))).json()
    b = await (await http.get(f"{stack.url}/v1/vault/me", headers=bearer(b_tok))).json()
    assert (a["agent_id"], a["balance_msat"]) == (a_id, 1000)
    assert (b["agent_id"], b["balance_msat"]) == (b_id, 2000)
    hist = await (await http.get(f"{stack.url}/v1/vault/me/history", headers=bearer(a_tok))).json()
    assert {i["agent_id"] for i in hist["data"]} == {a_id}


async def test_rotated_token_replaces_the_old_one(http, stack) -> None:
    agent_id, old = await new_agent(http, stack, "rot", deposit_msat=100_000)
    new = (await admin(http, stack, "POST", f"/v1/admin/agents/{agent_id}/token", expect=200))["token"]
    assert new != old
    r, _ = await chat(http, stack, old, max_tokens=5)
    assert r.status == 401
    r, _ = await chat(http, stack, new, max_tokens=5)
    assert r.status == 200


async def test_policy_patch_and_bad_admin_input(http, stack) -> None:
    agent_id, _ = await new_agent(http, stack, "pol")
    acct = await admin(http, stack, "PATCH", f"/v1/admin/agents/{agent_id}/policy", {"max_tx_msat": 1234},
                       expect=200)
    assert acct["policy"]["max_tx_msat"] == 1234
    bad = await admin(http, stack, "PATCH", f"/v1/admin/agents/{agent_id}/policy", {"max_tx_msat": "lots"},
                      expect=400)
    assert bad["error"]["param"] == "max_tx_msat"
    bad = await admin(http, stack, "POST", f"/v1/admin/agents/{agent_id}/deposits", {"amount_msat": 1.5},
                      expect=400)
    assert bad["error"]["param"] == "amount_msat"
    bad = await admin(http, stack, "POST", f"/v1/admin/agents/{agent_id}/deposits", {"amount_msat": -3},
                      expect=400)
    await admin(http, stack, "GET", "/v1/admin/agents/agt_nope", expect=404)
    assert_balanced(await books(http, stack))


async def test_deposit_is_idempotent_on_its_id(http, stack) -> None:
    agent_id, _ = await new_agent(http, stack, "dep")
    for _ in range(3):
        await admin(http, stack, "POST", f"/v1/admin/agents/{agent_id}/deposits",
                    {"amount_msat": 5000, "deposit_id": "dep-1"}, expect=201)
    acct = await admin(http, stack, "GET", f"/v1/admin/agents/{agent_id}", expect=200)
    assert acct["deposited_msat"] == 5000


async def approval_flow(http, stack, token: str) -> asyncio.Task:
    return asyncio.create_task(chat(http, stack, token, max_tokens=50))


async def wait_pending_approval(http, stack) -> dict[str, Any]:
    for _ in range(100):
        items = (await admin(http, stack, "GET", "/v1/admin/approvals", expect=200))["data"]
        if items:
            return items[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no approval appeared")


@pytest.mark.parametrize("action", ["approve", "deny"])
async def test_approval_approve_and_deny(http, stack, action: str) -> None:
    agent_id, token = await new_agent(http, stack, "needs-ok", deposit_msat=1_000_000,
                                      policy={"approval_over_msat": 100, "approval_timeout_s": 30})
    pending = await approval_flow(http, stack, token)
    item = await wait_pending_approval(http, stack)
    assert item["agent_id"] == agent_id and item["amount_msat"] > 100
    await admin(http, stack, "POST", f"/v1/admin/approvals/{item['request_id']}/{action}", expect=200)
    r, body = await pending
    if action == "approve":
        assert r.status == 200, body
    else:
        assert r.status == 403 and body["error"]["code"] == "approval_denied"
    acct = await settled(http, stack, agent_id)
    assert acct["pending_msat"] == 0
    assert_balanced(await books(http, stack))


async def test_approval_timeout_denies_and_releases(http, stack) -> None:
    agent_id, token = await new_agent(http, stack, "slow-human", deposit_msat=1_000_000,
                                      policy={"approval_over_msat": 100, "approval_timeout_s": 1})
    r, body = await chat(http, stack, token, max_tokens=50)
    assert r.status == 403 and body["error"]["code"] == "approval_timeout"
    acct = await settled(http, stack, agent_id)
    assert acct["balance_msat"] == 1_000_000 and acct["spent_msat"] == 0
    assert_balanced(await books(http, stack))


async def test_failed_upstream_releases_the_hold(http, stack, mock_upstream) -> None:
    agent_id, token = await new_agent(http, stack, "unlucky", deposit_msat=1_000_000)
    async with aiohttp.ClientSession() as s:
        for p in ("alpha", "beta", "gamma"):
            await s.post(f"{mock_upstream}/_mock/{p}/faults", json={"status": 500, "count": 1})
    try:
        r, body = await chat(http, stack, token, max_tokens=10)
        assert r.status == 502
        acct = await settled(http, stack, agent_id)
        assert acct["balance_msat"] == 1_000_000 and acct["spent_msat"] == 0
    finally:
        async with aiohttp.ClientSession() as s:
            for p in ("alpha", "beta", "gamma"):
                await s.delete(f"{mock_upstream}/_mock/{p}/faults")


async def test_audit_chain_verifies(http, stack) -> None:
    agent_id, token = await new_agent(http, stack, "audited", deposit_msat=100_000)
    for _ in range(3):
        r, _ = await chat(http, stack, token, max_tokens=5)
        assert r.status == 200
    await settled(http, stack, agent_id)
    audit = await admin(http, stack, "GET", f"/v1/admin/audit?agent={agent_id}", expect=200)
    events = sorted(audit["data"], key=lambda i: i["seq"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    for prev, cur in zip(events, events[1:]):
        if cur["hash"] == prev["hash"]:  # two events of one journal batch: chained by their batch
            assert cur["prev_hash"] == prev["prev_hash"]
        else:
            assert cur["prev_hash"] == prev["hash"]
    check = await admin(http, stack, "GET", "/v1/admin/audit/verify", expect=200)
    assert check["ok"] is True and check["events"] >= len(events)


async def test_request_ids_may_collide_across_agents_but_not_be_reused(http, stack) -> None:
    a_id, a_tok = await new_agent(http, stack, "ida", deposit_msat=1_000_000)
    b_id, b_tok = await new_agent(http, stack, "idb", deposit_msat=1_000_000)
    same = {"X-Request-Id": "client-chosen-1"}
    ra = await http.post(f"{stack.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": CHAT},
                         headers={**bearer(a_tok), **same})
    rb = await http.post(f"{stack.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": CHAT},
                         headers={**bearer(b_tok), **same})
    assert ra.status == 200 and rb.status == 200
    a = await settled(http, stack, a_id)
    b = await settled(http, stack, b_id)
    assert a["spent_msat"] == int(ra.headers["x-arbstr-cost-msat"])
    assert b["spent_msat"] == int(rb.headers["x-arbstr-cost-msat"])  # b's settle was not deduplicated as a's
    again = await http.post(f"{stack.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": CHAT},
                            headers={**bearer(a_tok), **same})
    body = await again.json()
    assert again.status == 409 and body["error"]["code"] == "request_id_reused"
    assert (await settled(http, stack, a_id))["spent_msat"] == a["spent_msat"]
    assert_balanced(await books(http, stack))


async def test_a_hold_covers_the_route_taken_and_grows_only_on_a_costlier_fallback(
        http: aiohttp.ClientSession, fresh_nats: NatsServer, mock_upstream: str) -> None:
    """The hold is the cheapest candidate's price, not the costliest's; when that candidate fails, the hold grows
    to cover the next one before it is called (one more journal write, only then), and the request is charged at
    the rates of the provider that served it; a fallback the agent cannot afford is skipped, never overdrawn."""
    providers = [{"name": name, "url": f"{mock_upstream}/{name}/v1", "models": ["fallback-model"],
                  "input_rate": rate, "output_rate": rate, "tier": "frontier"}
                 for name, rate in (("fb_cheap", 8000), ("fb_dear", 24000))]
    # The per-request path (a grant would decide the hold in the gateway: see test_grants.py).
    stack = await start_stack(demo_config(mock_upstream, vault=vault_section(grants={"enabled": False}),
                                          providers=providers), fresh_nats.url)
    await add_vault(stack)
    body = {"model": "fallback-model", "max_tokens": 10, "messages": [{"role": "user", "content": "fall over"}]}
    try:
        cheap = cost_msat(estimate_messages_tokens(body["messages"]), 10, 8000, 8000)
        dear = cost_msat(estimate_messages_tokens(body["messages"]), 10, 24000, 24000)
        agent_id, token = await new_agent(http, stack, "fallback", deposit_msat=dear + cheap)
        async with http.post(f"{mock_upstream}/_mock/fb_cheap/faults",
                             json={"status": 503, "count": 1}) as r:
            assert r.status < 300, await r.text()
        async with http.post(f"{stack.url}/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200, await r.text()
            assert r.headers["x-arbstr-provider"] == "fb_dear" and int(r.headers["x-arbstr-cost-msat"]) == dear
        acct = await settled(http, stack, agent_id)
        assert (acct["spent_msat"], acct["balance_msat"], acct["uncollectible_msat"]) == (dear, cheap, 0)
        audit = await admin(http, stack, "GET", f"/v1/admin/audit?agent={agent_id}", expect=200)
        kinds = [i["kind"] for i in reversed(audit["data"])]
        assert kinds[-3:] == ["reserved", "hold_extended", "settled"]
        reserved = next(i for i in audit["data"] if i["kind"] == "reserved")
        assert reserved["amount_msat"] == cheap  # held for the candidate about to be called
        # Now only the cheap hold is affordable: when it fails, the dear fallback is skipped (never overdrawn) and
        # the client gets the cheap provider's failure; nothing is charged.
        async with http.post(f"{mock_upstream}/_mock/fb_cheap/faults", json={"status": 503, "count": 1}) as r:
            assert r.status < 300
        async with http.post(f"{stack.url}/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 502, await r.text()
        acct = await settled(http, stack, agent_id)
        assert (acct["spent_msat"], acct["balance_msat"], acct["pending_msat"]) == (dear, cheap, 0)
        assert await received(mock_upstream, "fb_dear") == 1  # called for the first request only
        assert_balanced(await books(http, stack))
    finally:
        await stack.stop()
