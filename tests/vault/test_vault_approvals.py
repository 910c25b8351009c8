"""Approvals are addressed by (agent, request id) (issue 12): request ids are the clients' and collide across
agents, so deciding one must never touch another agent's request, and deciding one already decided is a 409.
Real HTTP, a real vault on a real nats-server; the CLI as an operator runs it."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import aiohttp
import pytest

from arbstr.natsserver import NatsServer
from tests.support.stack import ADMIN_TOKEN, Stack, add_vault, demo_config, start_stack, vault_section
from tests.ops.test_cli import arbstr
from tests.support.vault_helpers import ADMIN, assert_balanced, bearer, books, new_agent, settled

NEEDS_OK = {"approval_over_msat": 100, "approval_timeout_s": 60}


@pytest.fixture
async def stack(fresh_nats: NatsServer, mock_upstream: str) -> AsyncIterator[Stack]:
    s = await start_stack(demo_config(mock_upstream, vault=vault_section()), fresh_nats.url)
    await add_vault(s)
    yield s
    await s.stop()


def chat(http: aiohttp.ClientSession, stack: Stack, token: str, rid: str) -> "asyncio.Task[tuple[int, Any]]":
    async def go() -> tuple[int, Any]:
        r = await http.post(f"{stack.url}/v1/chat/completions", headers={**bearer(token), "X-Request-Id": rid},
                            json={"model": "gpt-4o-mini", "max_tokens": 30,
                                  "messages": [{"role": "user", "content": "Hello there"}]})
        return r.status, await r.json()
    return asyncio.create_task(go())


async def post(http: aiohttp.ClientSession, stack: Stack, path: str) -> tuple[int, Any]:
    r = await http.post(f"{stack.url}{path}", headers=ADMIN)
    return r.status, await r.json()


async def queue(http: aiohttp.ClientSession, stack: Stack, n: int) -> list[dict[str, Any]]:
    for _ in range(200):
        r = await http.get(f"{stack.url}/v1/admin/approvals", headers=ADMIN)
        items = (await r.json())["data"]
        if len(items) >= n:
            return items
        await asyncio.sleep(0.05)
    raise AssertionError(f"the queue never held {n} approvals")


async def test_two_agents_with_one_request_id_are_decided_apart(http, stack) -> None:
    a_id, a_tok = await new_agent(http, stack, "ada", deposit_msat=1_000_000, policy=NEEDS_OK)
    b_id, b_tok = await new_agent(http, stack, "bob", deposit_msat=1_000_000, policy=NEEDS_OK)
    a_wait, b_wait = chat(http, stack, a_tok, "dup-1"), chat(http, stack, b_tok, "dup-1")
    items = await queue(http, stack, 2)
    assert sorted((i["agent_id"], i["request_id"]) for i in items) == sorted([(a_id, "dup-1"), (b_id, "dup-1")])
    # The old path cannot know which one the operator saw: it refuses, naming the way to say it.
    status, body = await post(http, stack, "/v1/admin/approvals/dup-1/approve")
    assert (status, body["error"]["code"], body["error"]["param"]) == (400, "agent_id_required", "agent_id")
    # Approving B's approves B's, and only B's.
    status, body = await post(http, stack, f"/v1/admin/approvals/{b_id}/dup-1/approve")
    assert (status, body["agent_id"], body["state"]) == (200, b_id, "held"), body
    status, body = await b_wait
    assert status == 200, body
    assert [i["agent_id"] for i in await queue(http, stack, 1)] == [a_id]
    assert not a_wait.done()
    # Deciding B's again, either way, is a conflict, never a quiet success.
    for action in ("approve", "deny"):
        status, body = await post(http, stack, f"/v1/admin/approvals/{b_id}/dup-1/{action}")
        assert (status, body["error"]["code"]) == (409, "already_decided"), (action, body)
    # A's is now the one pending "dup-1": the old path decides it, since it can name only that one.
    status, body = await post(http, stack, "/v1/admin/approvals/dup-1/deny")
    assert (status, body["agent_id"], body["state"]) == (200, a_id, "denied"), body
    status, body = await a_wait
    assert (status, body["error"]["code"]) == (403, "approval_denied")
    status, body = await post(http, stack, f"/v1/admin/approvals/{a_id}/dup-1/deny")
    assert (status, body["error"]["code"]) == (409, "already_decided")
    status, body = await post(http, stack, "/v1/admin/approvals/dup-1/approve")  # both decided: which? neither
    assert (status, body["error"]["code"]) == (400, "agent_id_required")
    assert ((await settled(http, stack, a_id))["spent_msat"], (await settled(http, stack, b_id))["spent_msat"] > 0) \
        == (0, True)
    assert_balanced(await books(http, stack))


async def test_one_agent_using_an_id_never_blocks_anothers_approval(http, stack) -> None:
    a_id, a_tok = await new_agent(http, stack, "cid", deposit_msat=1_000_000)  # no approval needed
    b_id, b_tok = await new_agent(http, stack, "dee", deposit_msat=1_000_000, policy=NEEDS_OK)
    status, body = await chat(http, stack, a_tok, "task-7")
    assert status == 200, body
    b_wait = chat(http, stack, b_tok, "task-7")
    (item,) = await queue(http, stack, 1)
    assert (item["agent_id"], item["request_id"]) == (b_id, "task-7")
    status, body = await post(http, stack, f"/v1/admin/approvals/{a_id}/task-7/approve")
    assert (status, body["error"]["code"]) == (409, "not_awaiting_approval")  # A's never waited for anyone
    status, body = await post(http, stack, "/v1/admin/approvals/task-7/approve")  # one pending: B's
    assert (status, body["agent_id"]) == (200, b_id), body
    assert (await b_wait)[0] == 200
    status, body = await post(http, stack, f"/v1/admin/approvals/{b_id}/nothing-like-it/approve")
    assert (status, body["error"]["code"]) == (404, "unknown_request")
    status, body = await post(http, stack, "/v1/admin/approvals/agt_nobody/task-7/approve")
    assert (status, body["error"]["code"]) == (404, "agent_not_found")
    await settled(http, stack, b_id)
    assert_balanced(await books(http, stack))


async def test_the_cli_decides_by_agent_and_request_id(http, stack) -> None:
    loop = asyncio.get_running_loop()
    a_id, a_tok = await new_agent(http, stack, "eve", deposit_msat=1_000_000, policy=NEEDS_OK)
    b_id, b_tok = await new_agent(http, stack, "fay", deposit_msat=1_000_000, policy=NEEDS_OK)
    a_wait, b_wait = chat(http, stack, a_tok, "cli-1"), chat(http, stack, b_tok, "cli-1")
    await queue(http, stack, 2)
    out = await loop.run_in_executor(None, lambda: arbstr("approvals", "deny", b_id, "cli-1", "--reason", "no",
                                                          "--url", stack.url, "--admin-token", ADMIN_TOKEN))
    assert out.returncode == 0, out.stderr
    assert (await b_wait)[1]["error"]["code"] == "approval_denied"
    out = await loop.run_in_executor(None, lambda: arbstr("approvals", "deny", b_id, "cli-1",
                                                          "--url", stack.url, "--admin-token", ADMIN_TOKEN))
    assert out.returncode != 0 and "409" in out.stderr
    assert not a_wait.done()
    out = await loop.run_in_executor(None, lambda: arbstr("approvals", "approve", a_id, "cli-1",
                                                          "--url", stack.url, "--admin-token", ADMIN_TOKEN))
    assert out.returncode == 0, out.stderr
    assert (await a_wait)[0] == 200


async def test_a_request_whose_client_left_while_it_waited_is_not_served_when_approved(http, stack) -> None:
    # The gateway went on once the operator approved: it called the provider and charged the agent for an answer
    # nobody was there to receive (the client hung up while the hold waited in the queue).
    agent_id, token = await new_agent(http, stack, "gone", deposit_msat=1_000_000, policy=NEEDS_OK)
    waiting = chat(http, stack, token, "gone-1")
    await queue(http, stack, 1)
    waiting.cancel()  # the client hangs up while the hold waits
    await asyncio.gather(waiting, return_exceptions=True)
    await asyncio.sleep(0.3)  # the gateway's side of the connection notices the close
    status, body = await post(http, stack, f"/v1/admin/approvals/{agent_id}/gone-1/approve")
    assert status == 200, body
    acct = await settled(http, stack, agent_id)
    assert (acct["pending_msat"], acct["spent_msat"], acct["balance_msat"]) == (0, 0, 1_000_000), acct
    assert_balanced(await books(http, stack))
